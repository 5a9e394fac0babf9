"""Decode once for analysis: a clip's frames at a small size and low rate, plus mono audio.

Scorers share this one decode (ARCHITECTURE decision 4): motion, jitter, borders, text,
aesthetics and technical quality read ``AnalysisClip.frames``; audio scorers read ``audio``.
"""

from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import av
import numpy as np

from reelflow.curation.safe_open import FFMPEG_INPUT_FLAGS, open_media


@dataclass
class AnalysisClip:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB, short side = analysis short side
    fps: float  # analysis frame rate (frames[i] is at start_s + i / fps)
    audio: np.ndarray | None  # (N,) float32 mono in [-1, 1], or None when the clip has no audio
    sample_rate: int | None
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @cached_property
    def gray(self) -> np.ndarray:
        """(T, H, W) uint8 luma (BT.601), computed once on first use (every scorer reads it)."""
        import cv2

        # OpenCV's fixed-point BT.601 (the same weights, rounded): a tenth of the float version's
        # time, within one level of it.
        t, h, w, _ = self.frames.shape
        return cv2.cvtColor(np.ascontiguousarray(self.frames).reshape(t * h, w, 3), cv2.COLOR_RGB2GRAY).reshape(t, h, w)


def _analysis_size(w: int, h: int, short_side: int) -> tuple[int, int]:
    scale = min(1.0, short_side / min(w, h))
    return max(2, int(round(w * scale / 2)) * 2), max(2, int(round(h * scale / 2)) * 2)


def _clip_frame_slots(start_s: float, rate: float, anchor_at_start: bool):
    """A generator fed source frame times (``send(t)``, in order, from the span's start on); yields
    the index of the clip frame each one lands in, as the extract stage's ffmpeg places it.

    ``-ss`` (accurate seek) keeps frames from ``start_s`` on and makes times relative to it; the
    ``fps`` filter rounds each frame's time to the clip's frame grid; a clip slot holds the last
    frame rounded into it (frames that share a slot are dropped, empty slots repeat the frame
    before). Where the grid starts is ffmpeg 5.1's quirk: at the span's start when the source has
    an audio stream (empty leading slots repeat the first slot's frame), else where the first kept frame
    lands (``anchor_at_start`` False). Checked frame for frame against ffmpeg on numbered frames,
    with and without audio (tests/test_scoring_frames.py)."""
    first: int | None = None
    slot = 0
    while True:
        t = yield slot
        pts = _round_half_away((t - start_s) * rate)
        if first is None:
            first = 0 if anchor_at_start else pts
        slot = pts - first


def _round_half_away(x: float) -> int:
    # ffmpeg rescales timestamps with AV_ROUND_NEAR_INF: halves round away from zero. The 1e-9
    # absorbs float error in frame.time so an exact half stays a half.
    return int(math.floor(abs(x) + 0.5 + 1e-9)) * (1 if x >= 0 else -1)


def _analysis_clip_frames(duration_s: float, fps: float, rate: float):
    """The clip frame indices (at ``rate``) the analysis samples at ``fps``: for each sample time,
    the clip frame nearest it, never the same frame twice (a clip slower than the analysis rate
    is not padded with repeats), and only frames inside the clip's ``duration_s``."""
    last = -1
    n_frames = max(1, int(math.ceil(duration_s * rate - 1e-6)))
    k = 0
    while True:
        t = k / fps
        if t >= duration_s - 1e-9:
            return
        n = _round_half_away(t * rate)
        if n >= n_frames:
            return
        if n > last:
            yield n
            last = n
        k += 1


def decode_for_analysis(
    path: str | Path,
    start_s: float = 0.0,
    end_s: float | None = None,
    short_side: int = 256,
    fps: float = 8.0,
    audio_rate: int = 16000,
    audio_path: str | Path | None = None,
    rotation: int = 0,
    source_audio_rate: int | None = None,
    clip_fps: float | None = None,
) -> AnalysisClip:
    """Decode ``[start_s, end_s)`` of a video once: frames sampled at ``fps`` and scaled so the
    short side is at most ``short_side``; audio as 16 kHz mono, from ``audio_path`` when the
    audio lives in its own file (extracted clips keep it as FLAC).

    A candidate is judged from its span of the source before it is encoded, so the span must
    show the frames its clip would hold: the samples are taken from the clip the extract stage
    would write at ``clip_fps`` (the policy's output rate; default the stream's own rate), worked
    out from the source's timestamps (``_clip_frame_slots``) rather than encoded. ``rotation`` is
    the probe's display rotation (degrees counter-clockwise, a multiple of 90): frames are turned
    upright as ffmpeg's autorotate turns them in the clip. With ``source_audio_rate`` (the
    output's audio rate) the audio is mixed as the extract stage will write it (``_source_audio``)."""
    frames: list[np.ndarray] = []
    with open_media(path) as c:
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        if end_s is None:
            end_s = float(vs.duration * vs.time_base) if vs.duration else c.duration / av.time_base
        stream_rate = vs.average_rate or vs.guessed_rate
        grid = float(clip_fps or stream_rate or fps)  # the clip's frame rate
        if start_s > 0:
            c.seek(int(start_s / vs.time_base), stream=vs, backward=True)
        has_audio = bool(c.streams.audio)
        slots = _clip_frame_slots(start_s, grid, anchor_at_start=has_audio)
        next(slots)
        want = _analysis_clip_frames(end_s - start_s, fps, grid)
        target = next(want, None)
        held: av.VideoFrame | None = None  # the latest source frame: it fills clip slots until the next one
        held_slot = -1
        size: tuple[int, int] | None = None

        def take(frame: av.VideoFrame) -> int | None:  # keep ``frame`` as the wanted sample; the next one
            nonlocal size
            size = size or _analysis_size(frame.width, frame.height, short_side)
            frames.append(frame.to_ndarray(width=size[0], height=size[1], format="rgb24"))
            return next(want, None)

        for frame in c.decode(vs):
            if target is None:
                break
            t = frame.time
            if t is None or t < start_s - 1e-6:  # ffmpeg's accurate -ss drops frames before the span
                continue
            slot = slots.send(t)
            # A slot holds the last frame rounded into it, so ``held`` is final once a frame lands
            # in a later slot; it then fills every wanted slot up to that one (slots before the
            # first frame's repeat the first slot's frame, as ffmpeg's fps filter repeats it).
            while held is not None and slot > held_slot and target is not None and target < slot:
                target = take(held)
            held, held_slot = frame, slot
        # The stream ended inside the span: its last frame's slot is the clip's last.
        while held is not None and target is not None and target <= held_slot:
            target = take(held)
    if audio_path is None and source_audio_rate:
        audio, rate = _source_audio(path, start_s, end_s, audio_rate, source_audio_rate) if has_audio else (None, None)
    else:
        audio, rate = _decode_audio(audio_path or path, start_s, end_s, audio_rate)
    if not frames:
        raise ValueError(f"no video frames in [{start_s:.2f}, {end_s:.2f}) s of {path}")
    stacked = np.stack(frames)
    if rotation % 360:
        stacked = np.ascontiguousarray(np.rot90(stacked, k=(rotation // 90) % 4, axes=(1, 2)))
    return AnalysisClip(stacked, fps, audio, rate, start_s, float(end_s))


def _source_audio(path: str | Path, start_s: float, end_s: float, rate: int,
                  stereo_rate: int) -> tuple[np.ndarray | None, int | None]:
    """A span of a source's audio as its extracted clip will carry it, read as a clip is read.

    The extract stage writes stereo FLAC with ffmpeg (``-ac 2 -ar stereo_rate``), and FLAC takes
    integer samples: ffmpeg then mixes 5.1 down to stereo in 32-bit integers, which comes out
    7.7 dB quieter than a float mix (ffmpeg's f32 output, or PyAV's resampler straight to mono;
    measured on Big Buck Bunny's AAC 5.1) and moves loudness and silence scores. So the span goes
    through the same integer mix (``-f s32le``), then through the mono resampler that reads a
    clip's FLAC. The caller has checked that the source has an audio stream."""
    proc = subprocess.run(clip_audio_command(path, stereo_rate, start_s, end_s), capture_output=True)
    if proc.returncode != 0:
        msg = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise ValueError(f"ffmpeg could not decode the audio span: {msg}")
    pcm = np.frombuffer(proc.stdout, np.int32)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    out = np.concatenate([stereo_s32_to_mono(pcm, stereo_rate, resampler), stereo_s32_to_mono(None, 0, resampler)])
    return out[: int(round((end_s - start_s) * rate))], rate


def clip_audio_command(path: str | Path, stereo_rate: int, start_s: float | None = None,
                       end_s: float | None = None) -> list[str]:
    """ffmpeg writing a source's audio (or its ``[start_s, end_s)`` span) to stdout as the extract
    stage's clip will hold it: stereo 32-bit integers at ``stereo_rate``."""
    span = ["-ss", f"{start_s:.6f}", "-t", f"{end_s - start_s:.6f}"] if start_s is not None else []
    return ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", *FFMPEG_INPUT_FLAGS, *span,
            "-i", str(path), "-map", "0:a:0", "-vn", "-ac", "2", "-ar", str(stereo_rate), "-f", "s32le", "-"]


def stereo_s32_to_mono(pcm: np.ndarray | None, stereo_rate: int, resampler: av.AudioResampler) -> np.ndarray:
    """Interleaved stereo s32 samples through the mono resampler that reads a clip's FLAC (one
    resampler per stream: it carries its filter state across calls); None flushes it."""
    if pcm is None:
        frames = resampler.resample(None)
    else:
        pcm = pcm[: pcm.size // 2 * 2]
        if not pcm.size:
            return np.zeros(0, np.float32)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s32", layout="stereo")
        frame.sample_rate = stereo_rate
        frames = resampler.resample(frame)
    chunks = [o.to_ndarray().reshape(-1) for o in frames]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def _decode_audio(path: str | Path, start_s: float, end_s: float, rate: int) -> tuple[np.ndarray | None, int | None]:
    with open_media(path) as c:
        if not c.streams.audio:
            return None, None
        a = c.streams.audio[0]
        if start_s > 0:
            c.seek(int(start_s / a.time_base), stream=a, backward=True)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks: list[np.ndarray] = []
        first_t: float | None = None
        for frame in c.decode(a):
            if frame.time is not None and frame.time >= end_s:
                break
            for out in resampler.resample(frame):
                if first_t is None:
                    first_t = out.time if out.time is not None else start_s
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        return np.zeros(0, np.float32), rate
    pcm = np.concatenate(chunks).astype(np.float32)
    skip = max(0, int(round(((start_s - (first_t or start_s)) * rate))))
    n = int(round((end_s - start_s) * rate))
    return pcm[skip : skip + n], rate
