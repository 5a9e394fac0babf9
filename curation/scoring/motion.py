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

Flow is computed on at most ``max_flow_pairs`` (16) consecutive pairs spread evenly over the
clip, so its cost per clip is bounded whatever the clip's length; both flow scores are over those
pairs.

Movie Gen keeps clips whose mean motion lies between 0.5 and 7 (``MOVIEGEN_MOTION_RANGE``). The paper
does not state the unit of its motion vectors; ``motion_mean`` is the closest reproducible reading
(pixels per frame at low rate and a 256-px analysis size); calibrate before relying on the bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from reelflow.curation.scoring.frames import AnalysisClip

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
    # Flow on at most this many evenly spread frame pairs (None: every pair). 16 pairs keep the
    # mean within ~10% of all pairs on the real samples (bikes 10 s: 4.06 vs 4.16; bigbuckbunny
    # 5.4 s: 1.16 vs 1.06) while a 16 s clip at 8 fps (127 pairs) costs ~8x less. Static/slideshow
    # detection still compares every pair (it is cheap).
    max_flow_pairs: int | None = 16


def effective_fps(clip: AnalysisClip) -> float:
    """Frames per second actually held: ``decode_for_analysis`` never duplicates frames, so a source
    slower than the analysis rate gives fewer frames than ``clip.fps`` implies."""
    n = clip.frames.shape[0]
    if clip.duration_s > 0 and n > 1:
        return min(float(clip.fps), n / clip.duration_s)
    return float(clip.fps)


def flow_pairs(n_frames: int, max_pairs: int | None) -> np.ndarray:
    """Indices ``i`` of the consecutive pairs (i, i+1) that get dense flow: all of them, or
    ``max_pairs`` spread evenly over the clip. Each pair is still one analysis frame apart, so
    the unit is unchanged; only the number of samples drops (flow is the costliest scorer)."""
    n = max(0, n_frames - 1)
    if max_pairs is None or n <= max_pairs:
        return np.arange(n)
    return np.unique(np.floor((np.arange(max_pairs) + 0.5) * n / max_pairs).astype(int))


def pair_flows(gray: np.ndarray, cfg: MotionConfig = MotionConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Dense Farneback flow for the sampled consecutive pairs of ``gray`` (T, H, W).

    Returns ``(pairs, flows)``: the pair indices and a (P, H, W, 2) float32 array of per-pixel
    displacement (dx, dy) in analysis pixels from frame ``i`` to ``i + 1``. Shared by the motion
    scores and the camera-motion label, so the flow is computed once per clip."""
    pairs = flow_pairs(gray.shape[0], cfg.max_flow_pairs)
    flows = np.empty((len(pairs), *gray.shape[1:3], 2), np.float32)
    for k, i in enumerate(pairs):
        flows[k] = cv2.calcOpticalFlowFarneback(
            gray[i], gray[i + 1], None, cfg.pyr_scale, cfg.levels, cfg.winsize,
            cfg.iterations, cfg.poly_n, cfg.poly_sigma, 0,
        )
    return pairs, flows


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


def still_scores(clip: AnalysisClip, cfg: MotionConfig = MotionConfig()) -> dict[str, float]:
    """The scores that need no flow (a frame difference per pair, ~1/30 of the flow's cost):
    ``static_fraction``, ``static_longest_s``, and ``static`` where they alone decide it (a clip
    whose pairs are near-identical is static whatever its flow; otherwise ``static`` also reads
    ``motion_mean`` and is left out here). The score stage judges the cheap rules on these before
    it pays for flow (``scoring.skip_models_after_reject``)."""
    gray = clip.gray
    fps = effective_fps(clip)
    if gray.shape[0] < 2:  # one frame: no motion can be measured; treat it as a still
        return {"motion_mean": 0.0, "motion_max": 0.0, "static_fraction": 1.0,
                "static_longest_s": 1.0 / fps, "static": 1.0}
    same = _identical_pairs(gray, cfg)
    run = _longest_run(same)
    out = {"static_fraction": float(same.mean()), "static_longest_s": (run + 1) / fps if run else 0.0}
    if out["static_fraction"] >= cfg.static_fraction_min:
        out["static"] = 1.0
    return out


def score(clip: AnalysisClip, cfg: MotionConfig = MotionConfig(),
          flows: np.ndarray | None = None, still: dict[str, float] | None = None) -> dict[str, float]:
    """Motion scores of ``clip``; ``flows`` is ``pair_flows(clip.gray, cfg)[1]`` and ``still`` is
    ``still_scores(clip, cfg)`` when the caller already has them (the score stage shares the flow
    with the camera-motion label)."""
    gray = clip.gray
    fps = effective_fps(clip)
    still = still if still is not None else still_scores(clip, cfg)
    if gray.shape[0] < 2:
        return still
    # Flow in analysis pixels per analysis frame -> pixels per 1/8 s at a 256-px short side.
    scale = (REFERENCE_SHORT_SIDE / min(gray.shape[1:3])) * (fps / REFERENCE_FPS)
    if flows is None:
        flows = pair_flows(gray, cfg)[1]
    mags = np.array([float(np.mean(np.hypot(f[..., 0], f[..., 1]))) for f in flows]) * scale
    motion_mean = float(mags.mean())
    static = still["static_fraction"] >= cfg.static_fraction_min or motion_mean < cfg.static_motion_max
    return {
        "motion_mean": motion_mean,
        "motion_max": float(mags.max()),
        "static_fraction": still["static_fraction"],
        "static_longest_s": still["static_longest_s"],
        "static": 1.0 if static else 0.0,
    }
