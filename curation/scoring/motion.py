"""Motion and static-video scores over one ``AnalysisClip`` (Movie Gen's motion and static filters).

Scores (all floats; flags are 0.0 / 1.0):

``motion_mean``
    Mean dense optical-flow magnitude (OpenCV Farneback between consecutive analysis frames),
    in **pixels per 1/8 s at a 256-px short side** ("px/tick@256"). With the default decode
    (``short_side=256, fps=8``) this is exactly pixels per analysis frame; other analysis sizes and
    rates are rescaled linearly (size: x 256/short side; time: x effective fps / 8, i.e. constant
    velocity between frames is assumed). Range [0, inf); ~0 for a still, a slow pan is ~1-5, a hard
    shake is >10. Farneback reads a clean 4.27 px/tick pan as ~3.7-4.1 (picture entering at the
    frame edge has no match). A hard cut inside the clip shows up as a spurious flow spike.
``motion_max``
    The largest per-frame-pair mean magnitude, same unit (catches shake and cut spikes).
``static_fraction``
    Fraction of consecutive frame pairs that are near-identical (mean absolute luma difference
    below ``diff_tol`` levels *and* almost no pixel changed by more than ``pixel_tol``). Range [0, 1].
``static_longest_s``
    Longest run of near-identical frames, in seconds of the clip (a run of k identical pairs covers
    k + 1 frames = (k + 1) / fps s). Range [0, duration]; 0 when no pair is near-identical.
``static``
    1.0 when the clip is motionless (``static_fraction >= static_fraction_min`` or
    ``motion_mean < static_motion_max``), else 0.0. Movie Gen drops static video.

Movie Gen keeps clips whose mean motion lies between 0.5 and 7 (``MOVIEGEN_MOTION_RANGE``). The paper
does not state the unit of its motion vectors; ``motion_mean`` is the closest reproducible reading
(pixels per frame at low rate and a 256-px analysis size); calibrate before relying on the bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from curation.scoring.frames import AnalysisClip

REFERENCE_SHORT_SIDE = 256  # px: motion is reported as if frames had this short side
REFERENCE_FPS = 8.0  # Hz: motion is reported per 1/8 s (the default analysis rate)
MOVIEGEN_MOTION_RANGE = (0.5, 7.0)  # Movie Gen: keep mean motion vector between 0.5 and 7


@dataclass(frozen=True)
class MotionConfig:
    # Near-identical pair: compression noise on a still stays well under 1 level on average and
    # touches almost no pixel by more than ~10 levels; any real motion exceeds both.
    diff_tol: float = 1.0  # mean |delta luma|, 8-bit levels
    pixel_tol: int = 12  # 8-bit levels: a pixel "changed" when its luma moves more than this
    changed_max: float = 0.002  # fraction of changed pixels still counted as identical
    static_fraction_min: float = 0.9  # share of identical pairs that makes a clip static
    static_motion_max: float = 0.1  # px/tick@256: below this the clip is motionless anyway
    # Farneback: 3 pyramid levels with a 15-px window follow displacements of tens of pixels
    # at 256 px, enough for the 8 fps analysis rate.
    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 15
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.2


def effective_fps(clip: AnalysisClip) -> float:
    """Frames per second actually held: ``decode_for_analysis`` never duplicates frames, so a source
    slower than the analysis rate gives fewer frames than ``clip.fps`` implies."""
    n = clip.frames.shape[0]
    if clip.duration_s > 0 and n > 1:
        return min(float(clip.fps), n / clip.duration_s)
    return float(clip.fps)


def _pair_flow_magnitudes(gray: np.ndarray, cfg: MotionConfig) -> np.ndarray:
    mags = np.empty(max(0, gray.shape[0] - 1), np.float64)
    for i in range(len(mags)):
        flow = cv2.calcOpticalFlowFarneback(
            gray[i], gray[i + 1], None, cfg.pyr_scale, cfg.levels, cfg.winsize,
            cfg.iterations, cfg.poly_n, cfg.poly_sigma, 0,
        )
        mags[i] = float(np.mean(np.hypot(flow[..., 0], flow[..., 1])))
    return mags


def _identical_pairs(gray: np.ndarray, cfg: MotionConfig) -> np.ndarray:
    same = np.zeros(max(0, gray.shape[0] - 1), bool)
    for i in range(len(same)):
        d = cv2.absdiff(gray[i], gray[i + 1])
        same[i] = float(d.mean()) < cfg.diff_tol and float(np.mean(d > cfg.pixel_tol)) <= cfg.changed_max
    return same


def _longest_run(flags: np.ndarray) -> int:
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return best


def score(clip: AnalysisClip, cfg: MotionConfig = MotionConfig()) -> dict[str, float]:
    gray = clip.gray
    fps = effective_fps(clip)
    if gray.shape[0] < 2:  # one frame: no motion can be measured; treat it as a still
        return {"motion_mean": 0.0, "motion_max": 0.0, "static_fraction": 1.0,
                "static_longest_s": 1.0 / fps, "static": 1.0}
    # Flow in analysis pixels per analysis frame -> pixels per 1/8 s at a 256-px short side.
    scale = (REFERENCE_SHORT_SIDE / min(gray.shape[1:3])) * (fps / REFERENCE_FPS)
    mags = _pair_flow_magnitudes(gray, cfg) * scale
    same = _identical_pairs(gray, cfg)
    run = _longest_run(same)
    motion_mean = float(mags.mean())
    static_fraction = float(same.mean())
    static = static_fraction >= cfg.static_fraction_min or motion_mean < cfg.static_motion_max
    return {
        "motion_mean": motion_mean,
        "motion_max": float(mags.max()),
        "static_fraction": static_fraction,
        "static_longest_s": (run + 1) / fps if run else 0.0,
        "static": 1.0 if static else 0.0,
    }
