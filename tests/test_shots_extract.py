import av
import pytest

from reelflow.curation.extract import extract_clip, output_size
from reelflow.curation.policy import OutputPolicy, ShotPolicy
from reelflow.curation.shots import TransNetV2Detector, detect_adaptive


def _near(found, expected, tol):
    return all(any(abs(f - e) <= tol for f in found) for e in expected) and len(found) == len(expected)


def test_adaptive_detector_finds_known_cuts(media):
    gen = media["cuts"]
    shots = detect_adaptive(gen.path, ShotPolicy())
    starts = [a for a, _ in shots][1:]
    assert _near(starts, gen.cuts_s, tol=1.5 / 24), shots
    assert shots[0][0] == 0.0 and abs(shots[-1][1] - gen.duration_s) < 0.1


def test_adaptive_detector_on_real_multi_shot_video(media):
    shots = detect_adaptive(media["bikes"], ShotPolicy())
    assert len(shots) >= 4  # bikes.mp4 is edited from several shots
    assert all(b > a for a, b in shots)


def test_transnetv2_finds_known_cuts(media):
    gen = media["cuts"]
    shots = TransNetV2Detector().detect(gen.path)
    starts = [a for a, _ in shots][1:]
    assert _near(starts, gen.cuts_s, tol=2 / 24), shots


@pytest.mark.parametrize("src, cap, want", [((1280, 720), 768, (1280, 720)), ((1920, 1080), 256, (456, 256)),
                                            ((1080, 1920), 256, (256, 456)), ((176, 144), 256, (176, 144)),
                                            ((641, 273), 256, (602, 256))])
def test_output_size_caps_short_side_and_keeps_even(src, cap, want):
    assert output_size(*src, cap) == want


def test_extract_is_frame_accurate_h264_with_flac(media, tmp_path):
    gen = media["cuts"]
    cfg = OutputPolicy(max_short_side=144, fps=24)
    res = extract_clip(gen.path, 0.5, 2.5, tmp_path, "k1", 320, 180, 24.0, True, cfg)
    assert res.frames == 48 and (res.width, res.height) == (256, 144)
    with av.open(str(res.video_path)) as c:
        vs = c.streams.video[0]
        assert vs.codec_context.name == "h264" and vs.codec_context.pix_fmt == "yuv420p"
        frames = list(c.decode(vs))
    assert len(frames) == 48
    with av.open(str(res.audio_path)) as c:
        a = c.streams.audio[0]
        assert a.codec_context.name == "flac" and a.sample_rate == 48000 and a.channels == 2
        assert abs(float(c.duration / 1e6) - 2.0) < 0.05


def test_extract_never_crosses_the_cut(media, tmp_path):
    """A clip ending at the cut holds only frames of the first shot (testsrc2), none of mandelbrot."""
    import numpy as np

    gen = media["cuts"]
    cut = gen.cuts_s[0]
    res = extract_clip(gen.path, cut - 1.0, cut, tmp_path, "k2", 320, 180, 24.0, False, OutputPolicy(fps=24))
    assert res.frames == 24 and res.audio_path is None
    with av.open(str(res.video_path)) as c:
        last = list(c.decode(video=0))[-1].to_ndarray(format="rgb24").astype(float)
    with av.open(str(gen.path)) as c:
        frames = [f.to_ndarray(format="rgb24").astype(float) for f in c.decode(video=0)]
    i = int(round(cut * 24))
    before, after = frames[i - 1], frames[i]
    assert np.abs(last - before).mean() < np.abs(last - after).mean() / 3
