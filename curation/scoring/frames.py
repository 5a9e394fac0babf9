"""Decode once for analysis: a clip's frames at a small size and low rate, plus mono audio.

Scorers share this one decode (ARCHITECTURE decision 4): motion, jitter, borders, text,
aesthetics and technical quality read ``AnalysisClip.frames``; audio scorers read ``audio``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import av
import numpy as np

from curation.safe_open import open_media


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
        f = self.frames.astype(np.float32)
        return (0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]).round().astype(np.uint8)


def _analysis_size(w: int, h: int, short_side: int) -> tuple[int, int]:
    scale = min(1.0, short_side / min(w, h))
    return max(2, int(round(w * scale / 2)) * 2), max(2, int(round(h * scale / 2)) * 2)


def decode_for_analysis(
    path: str | Path,
    start_s: float = 0.0,
    end_s: float | None = None,
    short_side: int = 256,
    fps: float = 8.0,
    audio_rate: int = 16000,
    audio_path: str | Path | None = None,
) -> AnalysisClip:
    """Decode ``[start_s, end_s)`` of a video once: frames resampled to ``fps`` (nearest earlier
    frame) and scaled so the short side is at most ``short_side``; audio as 16 kHz mono, from
    ``audio_path`` when the audio lives in its own file (extracted clips keep it as FLAC)."""
    frames: list[np.ndarray] = []
    with open_media(path) as c:
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        if end_s is None:
            end_s = float(vs.duration * vs.time_base) if vs.duration else c.duration / av.time_base
        if start_s > 0:
            c.seek(int(start_s / vs.time_base), stream=vs, backward=True)
        size = None
        next_t = start_s
        for frame in c.decode(vs):
            t = frame.time
            if t is None or t < start_s - 1e-6:
                continue
            if t >= end_s - 1e-6:
                break
            if t + 1e-6 < next_t:
                continue
            if size is None:
                size = _analysis_size(frame.width, frame.height, short_side)
            frames.append(frame.to_ndarray(width=size[0], height=size[1], format="rgb24"))
            next_t += 1.0 / fps
            while next_t <= t:  # source slower than the analysis rate: no duplicates
                next_t += 1.0 / fps
    audio, rate = _decode_audio(audio_path or path, start_s, end_s, audio_rate)
    if not frames:
        raise ValueError(f"no video frames in [{start_s:.2f}, {end_s:.2f}) s of {path}")
    return AnalysisClip(np.stack(frames), fps, audio, rate, start_s, float(end_s))


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
