"""Extract + transcode: one frame-accurate H.264 yuv420p mp4 per clip, audio as 48 kHz FLAC.

One ffmpeg process decodes the source span once and writes both outputs. ``-ss`` before ``-i``
seeks to the keyframe before the start and decodes forward, discarding frames before the start:
frame accurate, without decoding the whole file.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from reelflow.curation.failures import ItemTimeout
from reelflow.curation.policy import OutputPolicy
from reelflow.curation.safe_open import FFMPEG_INPUT_FLAGS, open_media


class ExtractError(RuntimeError):
    """ffmpeg could not produce the clip; the message is ffmpeg's last error line."""


def output_size(src_w: int, src_h: int, max_short_side: int) -> tuple[int, int]:
    """Scale so the short side is at most ``max_short_side`` (never upscale); both sides even."""
    short = min(src_w, src_h)
    target_short = min(short, max_short_side)
    scale = target_short / short
    w = max(2, int(round(src_w * scale / 2)) * 2)
    h = max(2, int(round(src_h * scale / 2)) * 2)
    return w, h


@dataclass
class ExtractResult:
    video_path: Path
    audio_path: Path | None
    width: int
    height: int
    fps: float
    frames: int


def extract_clip(
    src: str | Path,
    start_s: float,
    end_s: float,
    out_dir: str | Path,
    key: str,
    src_width: int,
    src_height: int,
    src_fps: float,
    has_audio: bool,
    cfg: OutputPolicy,
    threads: int = 1,
    timeout_s: float | None = None,
) -> ExtractResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    w, h = output_size(src_width, src_height, cfg.max_short_side)
    fps = float(cfg.fps) if cfg.fps else float(src_fps)
    video_path = out_dir / f"{key}.mp4"
    audio_path = out_dir / f"{key}.flac" if has_audio else None
    dur = end_s - start_s
    cmd = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        # Local files and real containers only: a source never makes ffmpeg open another file.
        *FFMPEG_INPUT_FLAGS,
        # -ss/-t as input options: both outputs (video and audio) get exactly the span.
        "-ss", f"{start_s:.6f}", "-t", f"{dur:.6f}", "-i", str(src),
        # Rotation metadata is applied by ffmpeg's autorotate before the filters.
        "-map", "0:v:0", "-vf", f"fps={fps:g},scale={w}:{h}:flags=bicubic,format=yuv420p",
        "-c:v", "libx264", "-preset", cfg.x264_preset, "-crf", str(cfg.crf), "-pix_fmt", "yuv420p",
        "-threads", str(threads), "-movflags", "+faststart", "-an", str(video_path),
    ]
    if audio_path is not None:
        # Stereo at the policy's rate: one channel layout for every clip keeps loaders simple.
        cmd += ["-map", "0:a:0", "-vn", "-ac", "2", "-ar", str(cfg.audio_sample_rate), "-c:a", "flac",
                str(audio_path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:  # run() has killed ffmpeg
        raise ItemTimeout(timeout_s, "ffmpeg transcode") from None
    if proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise ExtractError(f"ffmpeg exited {proc.returncode}: {msg}")
    frames = count_frames(video_path)
    if frames == 0:
        raise ExtractError("ffmpeg wrote no video frames for the clip span")
    return ExtractResult(video_path, audio_path, w, h, fps, frames)


def count_frames(path: str | Path) -> int:
    with open_media(path) as c:
        vs = c.streams.video[0]
        if vs.frames:
            return int(vs.frames)
        return sum(1 for _ in c.demux(vs) if _.size)
