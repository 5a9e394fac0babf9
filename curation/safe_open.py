"""Opening untrusted media: local files only, and only real containers.

ffmpeg follows references inside some "media" files: an HLS playlist (``.m3u8``) makes it read
each listed segment, a DASH manifest or an ffconcat list any file or URL it names. A hostile
source could so make a worker read files it was never given (or fetch URLs). Every open of a
source therefore (a) allows only the ``file`` protocol and (b) allows only the demuxers of real
containers; playlists and manifests fail at open, before anything they name is touched. The
ffmpeg command line (``extract``) gets the same two flags.
"""

from __future__ import annotations

from pathlib import Path

import av

# Demuxer short names (FFmpeg's): the mp4 family, Matroska/WebM, AVI, MPEG-TS/PS, FLV, Ogg, MXF,
# ASF/WMV, and FLAC/WAV for the audio a clip keeps beside its video.
SAFE_FORMATS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,mpeg,flv,ogg,mxf,asf,flac,wav"
SAFE_OPEN_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": SAFE_FORMATS}
FFMPEG_INPUT_FLAGS = ["-protocol_whitelist", "file", "-format_whitelist", SAFE_FORMATS]

# First bytes of the reference-following formats: named in the reason when one is refused.
_SIGNATURES = {b"#EXTM3U": "an HLS playlist", b"ffconcat": "an ffconcat list", b"<MPD": "a DASH manifest",
               b"<?xml": "an XML document (e.g. a DASH manifest)"}


def open_media(path: str | Path, **kwargs) -> av.container.InputContainer:
    """``av.open`` for reading a source or clip, with the protocol and format whitelists."""
    return av.open(str(path), options=dict(SAFE_OPEN_OPTIONS), **kwargs)


def refused_format(path: str | Path) -> str | None:
    """What a file refused by the whitelist is, when its first bytes tell (else None)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError:
        return None
    for sig, what in _SIGNATURES.items():
        if head.startswith(sig):
            return what
    return None
