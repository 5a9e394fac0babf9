"""Technical quality: sharpness and exposure over one ``AnalysisClip``.

Computed on the luma (BT.601, ``AnalysisClip.gray``) of up to ``max_frames`` evenly spaced analysis
frames. Pass the output of ``borders.score`` as ``borders`` to measure the picture only: a black bar
would count as crushed shadows, and its hard edge as detail.

Scores:

``sharpness``
    Median over frames of the variance of the 3x3 Laplacian of 8-bit luma, in luma levels squared,
    **at the analysis size** (default 256-px short side; the value depends on scale, so compare clips
    decoded at the same size). Range [0, ~1e5]; flat or heavily blurred frames score ~10-20, soft
    real footage ~50-150, crisp or synthetic footage several hundred to a few thousand.
``mean_luma``
    Mean luma over all sampled pixels, in [0, 1] (0 black, 1 white).
``dark_clipped``
    Fraction of sampled pixels with luma <= ``dark_level`` (crushed shadows), in [0, 1].
``bright_clipped``
    Fraction of sampled pixels with luma >= ``bright_level`` (blown highlights), in [0, 1].

Movie Gen does not list a sharpness or exposure filter (its aesthetic score covers both); these
scores are for our own policy and for diagnostics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from reelflow.curation.scoring.frames import AnalysisClip


@dataclass(frozen=True)
class TechnicalConfig:
    max_frames: int = 16  # sharpness and exposure change slowly within a shot
    # Limited-range video maps black to RGB 0 and white to 255; compression noise spreads the
    # clipped values by a few levels, so "clipped" means within ~2% of either end.
    dark_level: int = 5
    bright_level: int = 250


def _picture_box(shape: tuple[int, int], borders: Mapping[str, float] | None) -> tuple[slice, slice]:
    h, w = shape
    if not borders:
        return slice(0, h), slice(0, w)
    top = int(round(borders.get("border_top", 0.0) * h))
    bottom = h - int(round(borders.get("border_bottom", 0.0) * h))
    left = int(round(borders.get("border_left", 0.0) * w))
    right = w - int(round(borders.get("border_right", 0.0) * w))
    if bottom - top < 8 or right - left < 8:  # nothing sensible left: score the whole frame
        return slice(0, h), slice(0, w)
    return slice(top, bottom), slice(left, right)


def score(
    clip: AnalysisClip,
    cfg: TechnicalConfig = TechnicalConfig(),
    borders: Mapping[str, float] | None = None,
) -> dict[str, float]:
    t = clip.frames.shape[0]
    idx = np.unique(np.linspace(0, t - 1, min(t, cfg.max_frames)).round().astype(int))
    sub = AnalysisClip(clip.frames[idx], clip.fps, None, None, clip.start_s, clip.end_s)
    ys, xs = _picture_box(sub.frames.shape[1:3], borders)
    gray = sub.gray[:, ys, xs]
    # Variance of the Laplacian: energy of second derivatives, i.e. fine detail; blur removes it.
    lap_var = [float(cv2.Laplacian(g, cv2.CV_64F).var()) for g in gray]
    return {
        "sharpness": float(np.median(lap_var)),
        "mean_luma": float(gray.mean() / 255.0),
        "dark_clipped": float(np.mean(gray <= cfg.dark_level)),
        "bright_clipped": float(np.mean(gray >= cfg.bright_level)),
    }
