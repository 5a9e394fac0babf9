import subprocess

import pytest

from reelflow.curation.probe import ProbeError, probe_file


def test_real_videos(media):
    b = probe_file(media["bikes"])
    assert (b.src_width, b.src_height, b.src_fps, b.has_audio) == (640, 272, 25.0, False)
    assert abs(b.src_duration_s - 10.0) < 0.05 and b.video_codec == "h264" and b.container == "mov"
    bbb = probe_file(media["bbb"])
    assert bbb.has_audio and bbb.audio_codec == "aac" and (bbb.src_width, bbb.src_height) == (1280, 720)


@pytest.mark.parametrize(
    "kind, status, match",
    [
        ("empty", "failed", "empty file"),
        ("truncated", "failed", "not a readable video|truncated"),
        ("not_video", "failed", "not a readable video"),
        ("audio_only", "rejected", "audio-only"),
    ],
)
def test_bad_inputs_have_clear_reasons(media, kind, status, match):
    with pytest.raises(ProbeError, match=match) as e:
        probe_file(media["bad"][kind])
    assert e.value.status == status


def test_truncated_after_header_is_caught(media, tmp_path):
    # moov atom first (faststart), then cut the data: the header is fine, the frames are gone.
    fast = tmp_path / "fast.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(media["cuts"].path), "-c", "copy",
                    "-movflags", "+faststart", str(fast)], check=True)
    data = fast.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ProbeError, match="truncated") as e:
        probe_file(cut)
    assert e.value.status == "failed"


def test_rotation_swaps_dimensions(media, tmp_path):
    rot = tmp_path / "rot.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(media["cuts"].path), "-c", "copy",
                    "-metadata:s:v:0", "rotate=90", str(rot)], check=True)
    p = probe_file(rot)
    assert p.rotation in (90, 270) and (p.src_width, p.src_height) == (180, 320)
