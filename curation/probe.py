"""Probe: what a file holds, read with PyAV (container, codecs, size after rotation, fps, duration).

Probing also decodes one frame at the start and one near the end: a file whose header is fine
but whose data is truncated or corrupt fails here, with a reason, before any expensive work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av

from reelflow.curation.records import FAILED, REJECTED
from reelflow.curation.safe_open import open_media, refused_format


@dataclass
class ProbeResult:
    container: str
    video_codec: str
    audio_codec: str | None
    src_width: int
    src_height: int
    rotation: int
    src_fps: float
    src_duration_s: float
    has_audio: bool
    size_bytes: int


class ProbeError(Exception):
    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def _first_frame(container: av.container.InputContainer, stream) -> av.VideoFrame | None:
    for frame in container.decode(stream):
        return frame
    return None


def probe_file(path: str | Path) -> ProbeResult:
    """Probe a local media file; raises ProbeError(status, reason) for anything unusable."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise ProbeError(FAILED, "empty file (0 bytes)")
    try:
        container = open_media(path, metadata_errors="ignore")
    except (av.error.ArgumentError, av.error.InvalidDataError) as e:
        # ArgumentError: "Format not on whitelist". A playlist or manifest is refused by design,
        # whatever its name: say so rather than "corrupt".
        what = refused_format(path)
        if what:
            raise ProbeError(REJECTED, f"{what}, not a media file: playlists and manifests are never opened "
                                       "(they make ffmpeg read other files)")
        if isinstance(e, av.error.ArgumentError):
            raise ProbeError(FAILED, f"not a readable video: container format not allowed ({e})")
        raise ProbeError(FAILED, "not a readable video: ffmpeg finds no media container in the file (corrupt, truncated or not a video)")
    except av.error.FFmpegError as e:
        raise ProbeError(FAILED, f"cannot open media: {e}")
    with container:
        if not container.streams.video:
            if container.streams.audio:
                raise ProbeError(REJECTED, "audio-only: the file has no video stream")
            raise ProbeError(FAILED, "no video stream in the file")
        vs = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        duration = _duration_s(container, vs)
        try:
            first = _first_frame(container, vs)
        except av.error.FFmpegError as e:
            raise ProbeError(FAILED, f"video stream cannot be decoded: {e}")
        if first is None:
            raise ProbeError(FAILED, "video stream holds no decodable frame")
        raw_rotation = float(getattr(first, "rotation", 0) or 0)
        rotation = int(round(raw_rotation)) % 360
        if rotation % 90:
            # A display matrix at 45 degrees: no training bucket holds a tilted frame, and
            # ffmpeg's autorotate would pad it. One file's oddity, so a rejection, not an error.
            raise ProbeError(REJECTED, f"rotation={raw_rotation:g}° is not a multiple of 90°")
        w, h = first.width, first.height
        if rotation in (90, 270):
            w, h = h, w
        fps = float(vs.average_rate or vs.guessed_rate or 0.0)
        if duration is None or duration <= 0:
            raise ProbeError(FAILED, "video has no duration (no timestamps in the stream)")
        if fps <= 0:
            fps = (vs.frames / duration) if vs.frames else 0.0
        if fps <= 0:
            raise ProbeError(FAILED, "video frame rate cannot be determined")
        _check_tail_decodes(container, vs, duration)
        return ProbeResult(
            container=container.format.name.split(",")[0],
            video_codec=vs.codec_context.name,
            audio_codec=audio.codec_context.name if audio is not None else None,
            src_width=int(w),
            src_height=int(h),
            rotation=rotation,
            src_fps=round(fps, 6),
            src_duration_s=round(float(duration), 6),
            has_audio=audio is not None,
            size_bytes=size,
        )


def _duration_s(container, vs) -> float | None:
    if vs.duration is not None and vs.time_base is not None:
        return float(vs.duration * vs.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _check_tail_decodes(container, vs, duration: float) -> None:
    """Seek to the last second and decode a frame: catches files cut off after their header."""
    if duration < 2.0:
        return
    target = duration - 1.0
    try:
        container.seek(int(target / vs.time_base), stream=vs, backward=True, any_frame=False)
        frame = next(container.decode(vs), None)
    except (av.error.FFmpegError, StopIteration) as e:
        raise ProbeError(FAILED, f"truncated or corrupt: no frame decodes near the end ({target:.1f}s of {duration:.1f}s): {e}")
    if frame is None or frame.time is None or frame.time < target - 12.0:
        raise ProbeError(FAILED, f"truncated: the stream ends before its declared duration of {duration:.1f}s")
