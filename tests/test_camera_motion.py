"""Camera-motion labels on generated camera moves: a virtual camera looks at a large random texture
and pans, tilts, zooms, rolls or shakes; the frames are encoded to H.264, decoded once through
``decode_for_analysis``, and labelled from ``pair_flows`` as the pipeline does."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from reelflow.curation.samples import write_frames_h264
from reelflow.curation.scoring.camera_motion import (
    CAMERA_LABELS,
    CameraMotionConfig,
    camera_motion,
    classify_camera_motion,
)
from reelflow.curation.scoring.frames import decode_for_analysis
from reelflow.curation.scoring.motion import MotionConfig, effective_fps, pair_flows

W, H = 320, 240  # output frames; short side 240 < 256, so the analysis decode keeps them as they are
FPS = 8  # the analysis rate: every encoded frame is one analysis frame
N = 17  # frames (2 s): 16 pairs (pair_flows may sample fewer)
PX_PER_TICK = 256 / H  # one output pixel per frame = 1.067 px/tick@256


def _texture(h: int = 1400, w: int = 1800, seed: int = 0) -> np.ndarray:
    """Colour noise summed over three scales: textured everywhere, so dense flow is well posed."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    for s in (3, 9, 27):
        n = rng.normal(0, 1, (h // s + 2, w // s + 2, 3)).astype(np.float32)
        img += cv2.resize(n, (w, h), interpolation=cv2.INTER_CUBIC) * s ** 0.5
    img = (img - img.mean()) / img.std()
    return np.clip(128 + 45 * img, 0, 255).astype(np.uint8)


def _shoot(tex: np.ndarray, poses: list[tuple[float, float, float, float]]) -> np.ndarray:
    """Frames of a virtual camera: pose = (cx, cy, magnification, roll°). Output pixel p shows the
    texture at centre + R(roll) (p - frame centre) / magnification."""
    frames = []
    for cx, cy, mag, roll in poses:
        a = np.deg2rad(roll)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / mag
        m = np.hstack([rot, (np.array([cx, cy]) - rot @ np.array([W / 2, H / 2]))[:, None]])
        frames.append(cv2.warpAffine(tex, m, (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                     borderMode=cv2.BORDER_REFLECT))
    return np.stack(frames)


def _write(path: Path, frames: np.ndarray, fps: int = FPS) -> Path:
    return write_frames_h264(path, frames, fps, crf=18)


C = (900.0, 700.0)  # camera start: the texture's middle
K = np.arange(N)
_shake = np.random.default_rng(1).uniform(-7, 7, (N, 2))
MOVES = {
    # name: (poses, expected label)
    "static": ([(*C, 1.0, 0.0)] * N, "static"),
    # camera turns right: the window slides right over the texture, content slides left
    "pan_right": ([(C[0] + 4 * k, C[1], 1.0, 0.0) for k in K], "pan_right"),
    "pan_left": ([(C[0] - 4 * k, C[1], 1.0, 0.0) for k in K], "pan_left"),
    # camera tilts up: the window moves up the texture (smaller y), content moves down
    "tilt_up": ([(C[0], C[1] - 4 * k, 1.0, 0.0) for k in K], "tilt_up"),
    "tilt_down": ([(C[0], C[1] + 4 * k, 1.0, 0.0) for k in K], "tilt_down"),
    # magnification grows 3 % per frame: content diverges from the centre
    "zoom_in": ([(*C, 1.03 ** k, 0.0) for k in K], "zoom_in"),
    "zoom_out": ([(*C, 1.6 * 0.97 ** k, 0.0) for k in K], "zoom_out"),
    # up to 7 px of random offset every frame, no drift: large motion that keeps changing direction
    "shaky": ([(C[0] + dx, C[1] + dy, 1.0, 0.0) for dx, dy in _shake], "shaky"),
    # a roll is no label, and a 45° diagonal move has no dominant direction
    "roll": ([(*C, 1.0, 2.0 * k) for k in K], "none"),
    "diagonal": ([(C[0] + 3 * k, C[1] + 3 * k, 1.0, 0.0) for k in K], "none"),
}


@pytest.fixture(scope="module")
def moves(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("camera")
    tex = _texture()
    return {name: _write(root / f"{name}.mp4", _shoot(tex, poses)) for name, (poses, _) in MOVES.items()}


def _label(path: Path, **decode):
    clip = decode_for_analysis(path, **decode)
    pairs, flows = pair_flows(clip.gray, MotionConfig())
    return classify_camera_motion(flows, effective_fps(clip), clip.gray, pairs)


@pytest.mark.parametrize("name", list(MOVES))
def test_generated_camera_moves_get_their_label(moves, name):
    m = _label(moves[name])
    want = MOVES[name][1]
    assert m.label == want, m
    assert m.label in CAMERA_LABELS and 0.0 <= m.confidence <= 1.0
    assert m.n_pairs == min(N - 1, MotionConfig().max_flow_pairs or N)
    if want != "none":
        assert m.raw_label == want and m.confidence >= 0.8, m


def test_components_follow_the_documented_conventions(moves):
    pan_r, pan_l = _label(moves["pan_right"]), _label(moves["pan_left"])
    tilt_u, zoom_i, zoom_o = _label(moves["tilt_up"]), _label(moves["zoom_in"]), _label(moves["zoom_out"])
    # 4 output px per frame at a 240-px short side = 4.27 px/tick@256; camera right => content left
    assert pan_r.translation_x == pytest.approx(-4 * PX_PER_TICK, rel=0.05)
    assert pan_l.translation_x == pytest.approx(4 * PX_PER_TICK, rel=0.05)
    assert abs(pan_r.translation_y) < 0.1 and abs(pan_r.zoom_rate) < 0.002
    assert tilt_u.translation_y == pytest.approx(4 * PX_PER_TICK, rel=0.05)  # tilt up => content down
    # 3 % magnification per frame: zoom_rate ~ +0.03 per tick (zoom out: 1/0.97 - 1 ~ -0.03)
    assert zoom_i.zoom_rate == pytest.approx(0.03, rel=0.1) and zoom_i.zoom_px == pytest.approx(0.03 * 128, rel=0.1)
    assert zoom_o.zoom_rate == pytest.approx(-0.03, rel=0.1)
    roll = _label(moves["roll"])
    # the sampling window turns clockwise on screen (y down), so the content turns counter-clockwise
    assert roll.rotation_rate == pytest.approx(-np.deg2rad(2.0), rel=0.1) and roll.raw_label == "none"
    shaky, static = _label(moves["shaky"]), _label(moves["static"])
    assert shaky.jitter > 5 and abs(shaky.translation_x) < 1.5
    assert static.motion_median < 0.1 and static.jitter < 0.1


def test_units_do_not_depend_on_the_analysis_rate(moves):
    # at 4 fps each pair spans two encoded frames (8 px), which is still 4.27 px per 1/8 s
    m = _label(moves["pan_right"], fps=4)
    assert m.label == "pan_right"
    assert m.translation_x == pytest.approx(-4 * PX_PER_TICK, rel=0.05)


def test_low_confidence_label_is_reported_as_none_with_its_raw_label(moves):
    m = _label(moves["diagonal"])
    assert m.label == "none" and m.raw_label in ("pan_right", "tilt_down") and m.confidence < 0.5
    clip = decode_for_analysis(moves["diagonal"])
    loose = camera_motion(clip, CameraMotionConfig(min_confidence=0.0))
    assert loose.label == loose.raw_label == m.raw_label
    # a clear pan is reported whatever the cut, up to an impossible one
    strict = camera_motion(decode_for_analysis(moves["pan_left"]), CameraMotionConfig(min_confidence=1.01))
    assert strict.label == "none" and strict.raw_label == "pan_left"


def test_a_moving_subject_does_not_hide_the_pan(tmp_path):
    """A camera panning right while a large textured patch (~14 % of the frame) moves the other way:
    the trimmed fit keeps the background's motion."""
    tex = _texture(seed=0)
    patch = _texture(160, 160, seed=7)[:90, :120]
    frames = _shoot(tex, [(C[0] + 4 * k, C[1], 1.0, 0.0) for k in K])
    for k, f in enumerate(frames):
        x = 60 + 6 * k  # content moves right, against the pan's leftward flow
        f[75:165, x:x + 120] = patch[:, : max(0, min(120, W - x))]
    m = _label(_write(tmp_path / "subject.mp4", frames))
    assert m.label == "pan_right", m
    assert m.translation_x == pytest.approx(-4 * PX_PER_TICK, rel=0.1)


def test_no_pairs_no_label_and_record_columns():
    m = classify_camera_motion(np.zeros((0, 8, 8, 2), np.float32))
    assert m.label == "none" and m.confidence == 0.0 and m.n_pairs == 0
    rec = m.as_record()
    assert rec["camera_label"] == "none" and set(rec) >= {"camera_confidence", "camera_translation_x",
                                                          "camera_zoom_rate", "camera_raw_label"}
