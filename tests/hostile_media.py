"""Hostile inputs for the hardening tests: real files, each small and quick to make, that a
curation run must survive one by one without the run stopping.

Every generator takes a target path and returns it as a ``Path``. What PyAV 18.1 (its bundled
FFmpeg 8.1 libraries) reports for each, measured on the 2-core dev machine:

- ``high_fps_video``: H.264 160x90, ``stream.average_rate == 2000``, 6000 frames, 3.0 s
  (stream and container duration), time base 1/16000. ~1.7 MB, made in ~0.8 s.
- ``rotated_video``: H.264 320x180 whose ``tkhd`` matrix rotates by 45 degrees.
  ``frame.rotation`` (PyAV 18, from the frame's DISPLAYMATRIX side data, i.e. FFmpeg's
  ``av_display_rotation_get``, counter-clockwise, truncated to int) reads **45** for
  ``degrees=45`` and -45 for ``degrees=-45``; ``curation.probe`` turns that into 45 (or 315) with
  its ``% 360``. The value is an int truncated toward zero: ``degrees=30`` reads 29 (the 16.16
  matrix holds 29.9999...), ``degrees=200`` reads -159. Stream width/height stay 320x180 and the
  sample aspect ratio stays 1. The ffmpeg 5.1 CLI (used by ``curation.extract``) autorotates an
  odd angle by inserting its ``rotate`` filter.
- ``huge_dimensions_video``: FFV1 in Matroska, 16400x16, 3 frames: PyAV opens it and decodes a
  first frame of 16400x16 (yuv420p). libx264 ("invalid width x height") and mpeg4 ("dimensions too
  large for MPEG-4") refuse such sizes, hence FFV1. ~17 KB.
- ``slow_decode_video``: FFV1 (range coder) 2560x1440, 150 frames at 24 fps (6.25 s) in Matroska,
  ~8.5 MB, made in ~0.4 s: six distinct frames are encoded once and their intra-only packets are
  muxed over and over, so making it costs six encodes while decoding costs 150. The first frame
  decodes in ~0.05 s (probe-style open + one frame); a full single-threaded decode
  (``thread_type="NONE"``) takes ~5.7 s on an idle 2-core machine (~38 ms a frame; 6-11 s when the
  machine is loaded). PyAV's default (slice threading) gains nothing: the stream has one slice.
  The ffmpeg 5.1 CLI decodes it too (~7 s with ``-threads 1``).
- ``nested_json_sidecar``: ``json.loads`` raises ``RecursionError`` (depth 100000, ~1.2 MB).
- ``huge_sidecar``: a valid JSON sidecar of ``mbytes`` MB (a long description).
- ``truncated_copy`` / ``conflicting_licence_manifest``: see their docstrings.

Nested references: HLS, DASH and ffconcat
-----------------------------------------
FFmpeg's playlist demuxers open other files on their own. Findings, PyAV 18.1 (FFmpeg 8.1
libraries) unless said otherwise; the ffmpeg/ffprobe 5.1 CLI on PATH behaves differently:

- HLS (``hls_playlist``, a ``.m3u8`` whose one segment is the absolute path of a local file):
  plain ``av.open(path)`` picks the ``hls`` demuxer and follows the segment: it reads and decodes
  the *other* file (format name ``"hls"``, all of the target's frames). The segment is read
  without seeking: an MPEG-TS or a faststart mp4 (``streamable_copy``) always works; an mp4 with
  its moov at the end works only when small enough to be read whole while probing (a 2-s 160x90
  file does), else it is opened and read but fails with ``InvalidDataError`` ("partial file",
  seen with a 5-s 320x180 file with audio). Either way the nested file is opened. FFmpeg 8.1
  detects HLS only by the extension (``.m3u8``/``.m3u``) or MIME type ("Not detecting m3u8/hls with
  non standard extension"): the same playlist named ``.mp4`` is probed as mov and fails with
  ``InvalidDataError``. The ffmpeg 5.1 CLI has no such check: it follows a playlist named
  ``.mp4`` too.
- DASH (``dash_manifest``): PyAV's FFmpeg 8.1 is built *without* the dash demuxer (only the dash
  muxer is there), so ``av.open`` of an ``.mpd`` raises ``InvalidDataError`` and opens nothing
  else. The ffmpeg 5.1 CLI/ffprobe has it, detects the MPD by content (also when named ``.mp4``)
  and does open the referenced local file (``file://`` URL or absolute path in ``BaseURL``).
- ffconcat (``concat_list``; an ``ffconcat version 1.0`` header, detected by content whatever the
  extension, e.g. ``.mp4``): the concat demuxer's default ``safe=1`` refuses an absolute path
  (``av.error.PermissionError``: "Unsafe file name", EPERM) but follows a relative one made of
  portable characters (no ``..``): plain ``av.open`` then decodes the target (format ``"concat"``).
- Restricting: ``av.open(path, options={...})`` (and ``container_options={...}``) with
  ``{"protocol_whitelist": "file", "format_whitelist": "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts"}``
  is passed to ``avformat_open_input`` as AVFormatContext options. FFmpeg then refuses the hls and
  concat demuxers at open: ``av.error.ArgumentError`` (EINVAL, errno 22, "Format not on
  whitelist"), before any nested file is opened; normal mp4/mkv/ts files open and decode as before.
  A whitelisted name matches any name of a multi-name demuxer ("mov" or "mp4" alone admits
  "mov,mp4,m4a,3gp,3g2,mj2"). The whitelist is inherited by nested opens: with
  ``format_whitelist="hls"`` the playlist opens but its mp4 segment is refused. ``protocol_whitelist
  ="file"`` alone does *not* stop a playlist that points at local files (the nested open is
  ``file`` too); it only stops other protocols (http, tcp, ...). The same options work on the
  ffmpeg 5.1 CLI as input options (``-protocol_whitelist file -format_whitelist ... -i src``):
  it then refuses hls, dash and concat alike ("Format not on whitelist", "Invalid argument").
"""

from __future__ import annotations

import csv
import json
import math
import os
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

from reelflow.curation import samples

FFMPEG = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]

# The demuxers a media file may use; the options that make FFmpeg refuse any other (see above).
SAFE_FORMATS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts"
SAFE_OPEN_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": SAFE_FORMATS}


def _prepare(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# -- video ------------------------------------------------------------------------------------

def high_fps_video(path: str | Path, fps: int = 2000, seconds: float = 3.0,
                   size: tuple[int, int] = (160, 90)) -> Path:
    """A real H.264 mp4 at ``fps`` frames a second (``stream.average_rate == fps``) lasting
    ``seconds``: tiny frames keep its 6000 frames to ~1.7 MB and ~0.8 s of encoding (x264
    ultrafast; ``samples.make_cut_video``'s veryfast takes twice as long)."""
    path = _prepare(path)
    w, h = size
    frames = int(round(seconds * fps))
    subprocess.run(
        [*FFMPEG, "-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate={fps}", "-frames:v", str(frames),
         "-c:v", "libx264", "-preset", "ultrafast", "-crf", "30", "-pix_fmt", "yuv420p", str(path)],
        check=True, capture_output=True,
    )
    return path


def _iter_boxes(buf: bytes | bytearray, start: int, end: int):
    """(type, offset, header_size, size) of the ISO BMFF boxes in buf[start:end]."""
    i = start
    while i + 8 <= end:
        size, typ = struct.unpack(">I4s", buf[i:i + 8])
        hdr = 8
        if size == 1:
            size = struct.unpack(">Q", buf[i + 8:i + 16])[0]
            hdr = 16
        elif size == 0:
            size = end - i
        if size < hdr or i + size > end:
            raise ValueError(f"malformed box {typ!r} at offset {i}")
        yield typ.decode("latin-1"), i, hdr, size
        i += size


def _video_tkhd_matrix_offset(buf: bytes | bytearray) -> int:
    """Offset of the 36-byte matrix in the ``tkhd`` box of the first video track."""
    moov = next((b for b in _iter_boxes(buf, 0, len(buf)) if b[0] == "moov"), None)
    if moov is None:
        raise ValueError("no moov box")
    _, mo, mh, ms = moov
    for typ, to, th, ts in _iter_boxes(buf, mo + mh, mo + ms):
        if typ != "trak":
            continue
        kids = {t: (o, h, s) for t, o, h, s in _iter_boxes(buf, to + th, to + ts)}
        if "tkhd" not in kids or "mdia" not in kids:
            continue
        do, dh, ds = kids["mdia"]
        mdia = {t: (o, h) for t, o, h, _ in _iter_boxes(buf, do + dh, do + ds)}
        if "hdlr" not in mdia:
            continue
        ho, hh = mdia["hdlr"]
        # hdlr: version/flags (4), pre_defined (4), handler_type (4)
        if bytes(buf[ho + hh + 8:ho + hh + 12]) != b"vide":
            continue
        ko, kh, _ = kids["tkhd"]
        version = buf[ko + kh]
        # version/flags (4); times, track_ID, reserved, duration (20 or 32); reserved (8);
        # layer, alternate_group, volume, reserved (8); then the matrix.
        return ko + kh + 4 + (32 if version == 1 else 20) + 8 + 8
    raise ValueError("no video track")


def set_display_rotation(path: str | Path, degrees: float) -> Path:
    """Rewrite, in place, the video track's ``tkhd`` matrix of an mp4 as a rotation by ``degrees``
    counter-clockwise, FFmpeg's convention (what PyAV's ``frame.rotation`` reads back).

    The matrix is {a b u / c d v / x y w}, a-d, x, y in 16.16 and u, v, w in 2.30 fixed point:
    a = d = cos, b = -sin, c = sin (FFmpeg reads the angle as -atan2(b, a)); no translation, the
    same as FFmpeg's muxer writes for the legacy ``rotate`` tag (which it only honours for
    multiples of 90, hence the patch).
    """
    path = Path(path)
    buf = bytearray(path.read_bytes())
    off = _video_tkhd_matrix_offset(buf)
    r = math.radians(degrees)
    c, s = round(math.cos(r) * 65536), round(math.sin(r) * 65536)
    buf[off:off + 36] = struct.pack(">9i", c, -s, 0, s, c, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(buf))
    return path


def rotated_video(path: str | Path, degrees: float = 45.0, seconds: float = 5.0,
                  size: tuple[int, int] = (320, 180), audio: bool = False) -> Path:
    """An H.264 mp4 whose track header rotates the picture by ``degrees`` (not a multiple of 90
    by default). PyAV 18: the first decoded frame's ``frame.rotation`` is ``int(degrees)`` in
    (-180, 180] (45 -> 45, -45 -> -45; truncated: 30 -> 29)."""
    path = samples.make_cut_video(_prepare(path), [seconds], size=size, fps=24, audio=audio).path
    return set_display_rotation(path, degrees)


def huge_dimensions_video(path: str | Path, width: int = 16400, height: int = 16, frames: int = 3,
                          fps: int = 24) -> Path:
    """A decodable FFV1/Matroska video wider than 16384 pixels (use a .mkv path)."""
    path = _prepare(path)
    subprocess.run(
        [*FFMPEG, "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}",
         "-frames:v", str(frames), "-c:v", "ffv1", "-pix_fmt", "yuv420p", str(path)],
        check=True, capture_output=True,
    )
    return path


def slow_decode_video(path: str | Path, size: tuple[int, int] = (2560, 1440), frames: int = 150,
                      fps: int = 24, distinct: int = 6, coder: str = "1") -> Path:
    """An FFV1 (range coder) Matroska video that is cheap to make and to probe but slow to decode
    in full: ~38 ms a frame single-threaded on the idle 2-core dev machine, so ~5.7 s for the
    default 150 frames (6-11 s under load), ~0.05 s to open and decode the first frame, ~8.5 MB,
    ~0.4 s to make. ``distinct`` frames (flat grey, a light box moving) are encoded once; FFV1 is
    intra-only, so their packets are muxed again and again with new timestamps."""
    import av
    import numpy as np

    path = _prepare(path)
    w, h = size
    tb = Fraction(1, fps)
    with av.open(str(path), "w", format="matroska") as c:
        s = c.add_stream("ffv1", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        # coder 1 (range coder): no run mode, every sample costs a decode step; coder 0 (Golomb)
        # has run mode: flat frames are tiny (~3 KB at 4K) yet still decode pixel by pixel.
        s.options = {"coder": coder}
        packets: list[bytes] = []
        for i in range(distinct):
            f = av.VideoFrame(w, h, "yuv420p")
            luma = np.full((h, w), 96, np.uint8)
            x0 = (i * w // max(distinct, 1)) // 2 * 2
            luma[h // 3:h // 3 + h // 6, x0:x0 + w // 8] = 200
            for plane, value in zip(f.planes, (luma, 128, 128)):
                buf = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
                buf[:, :plane.width] = value
            f.pts, f.time_base = i, tb
            packets += [bytes(p) for p in s.encode(f)]
        packets += [bytes(p) for p in s.encode()]
        for i in range(frames):
            p = av.Packet(packets[i % len(packets)])
            p.stream = s
            p.time_base = tb
            p.pts = p.dts = i
            p.duration = 1
            p.is_keyframe = True
            c.mux(p)
    return path


def truncated_copy(src: str | Path, dst: str | Path, keep_fraction: float = 0.5) -> Path:
    """The first ``keep_fraction`` of ``src``'s bytes: a download or upload cut short."""
    dst = _prepare(dst)
    data = Path(src).read_bytes()
    dst.write_bytes(data[: int(len(data) * keep_fraction)])
    return dst


def streamable_copy(src: str | Path, dst: str | Path) -> Path:
    """``src`` remuxed (no re-encode) so that it reads front to back without seeking: MPEG-TS for
    a ``.ts`` dst, else an mp4 with ``+faststart``. HLS can only follow such a segment."""
    dst = _prepare(dst)
    extra = [] if dst.suffix == ".ts" else ["-movflags", "+faststart"]
    subprocess.run([*FFMPEG, "-i", str(src), "-c", "copy", *extra, str(dst)], check=True, capture_output=True)
    return dst


# -- playlists that reference other files ------------------------------------------------------

def _duration_s(media: Path) -> float:
    import av

    try:
        with av.open(str(media)) as c:
            if c.duration:
                return c.duration / av.time_base
    except av.error.FFmpegError:
        pass
    return 10.0


def hls_playlist(path: str | Path, target_media: str | Path) -> Path:
    """An HLS playlist (use a ``.m3u8`` path) whose one segment is the absolute path of the local
    ``target_media``. Plain ``av.open`` follows it (see the module docstring); give it a
    ``streamable_copy`` (ts or faststart mp4) to have the nested open succeed."""
    path = _prepare(path)
    target = Path(target_media).resolve()
    dur = _duration_s(target)
    path.write_text(
        "#EXTM3U\n#EXT-X-VERSION:3\n"
        f"#EXT-X-TARGETDURATION:{math.ceil(dur)}\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n"
        f"#EXTINF:{dur:.3f},\n{target}\n#EXT-X-ENDLIST\n"
    )
    return path


def dash_manifest(path: str | Path, target_media: str | Path, file_url: bool = True) -> Path:
    """A static DASH MPD (use a ``.mpd`` path) with one representation whose ``BaseURL`` is the
    local ``target_media`` (``file://`` URL, or the plain absolute path with ``file_url=False``).
    PyAV 18.1 has no dash demuxer; the ffmpeg 5.1 CLI follows it."""
    path = _prepare(path)
    target = Path(target_media).resolve()
    dur = _duration_s(target)
    url = target.as_uri() if file_url else str(target)
    path.write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
        f'mediaPresentationDuration="PT{dur:.3f}S" minBufferTime="PT1S" '
        'profiles="urn:mpeg:dash:profile:isoff-on-demand:2011">\n'
        '  <Period id="0" start="PT0S">\n'
        '    <AdaptationSet mimeType="video/mp4" contentType="video" segmentAlignment="true">\n'
        '      <Representation id="v0" bandwidth="500000">\n'
        f"        <BaseURL>{url}</BaseURL>\n"
        "      </Representation>\n"
        "    </AdaptationSet>\n"
        "  </Period>\n"
        "</MPD>\n"
    )
    return path


def concat_list(path: str | Path, target_media: str | Path, relative: bool | None = None) -> Path:
    """An ffconcat script (any extension works, e.g. ``.mp4``) listing ``target_media``.

    ``relative=None`` writes the path relative to the script when ``target_media`` lies in the
    script's folder or below (the concat demuxer's default ``safe=1`` follows that), else the
    absolute path (refused by ``safe=1``: "Unsafe file name"). ``True``/``False`` force it.
    """
    path = _prepare(path)
    target = Path(target_media).resolve()
    try:
        rel = target.relative_to(path.resolve().parent).as_posix()
    except ValueError:
        rel = None
    if relative is None:
        relative = rel is not None
    if relative and rel is None:
        rel = os.path.relpath(target, path.resolve().parent)
    name = rel if relative else str(target)
    path.write_text("ffconcat version 1.0\nfile '" + name.replace("'", "'\\''") + "'\n")
    return path


# -- sidecars and manifests --------------------------------------------------------------------

def nested_json_sidecar(path: str | Path, depth: int = 100_000) -> Path:
    """A ``.json`` sidecar nesting ``{"license": {"license": ...}}`` ``depth`` levels deep:
    syntactically valid, but ``json.loads`` raises ``RecursionError``."""
    path = _prepare(path)
    path.write_text('{"license": ' * depth + '"CC0-1.0"' + "}" * depth)
    return path


def huge_sidecar(path: str | Path, mbytes: float = 5, license: str = "CC0-1.0") -> Path:
    """A valid JSON sidecar of about ``mbytes`` MB: a licence, a title and a very long description."""
    path = _prepare(path)
    unit = "A very long description of a very ordinary video. "
    n = int(mbytes * 1024 * 1024) // len(unit) + 1
    path.write_text(json.dumps({"license": license, "title": "huge sidecar", "description": unit * n}))
    return path


def conflicting_licence_manifest(path: str | Path, media: str | Path, first: str | None = "CC-BY-4.0",
                                 second: str | None = None, reverse: bool = False) -> Path:
    """A ``uri,license`` CSV manifest listing ``media`` twice with different licence claims
    (``None`` writes an empty cell); ``reverse`` swaps the two rows. The uri is written relative to
    the manifest when ``media`` lies in its folder or below (manifests resolve relative URIs
    against their own location), else absolute."""
    path = _prepare(path)
    media = Path(media)
    try:
        uri = media.resolve().relative_to(path.resolve().parent).as_posix()
    except ValueError:
        uri = str(media.resolve())
    rows = [(uri, first or ""), (uri, second or "")]
    if reverse:
        rows.reverse()
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uri", "license"])
        w.writerows(rows)
    return path
