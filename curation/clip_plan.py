"""Clip planning: Movie Gen's rule of single-shot clips of ``min..max`` seconds.

A clip never crosses a cut. Every shot yields at least one candidate: a shot too short for the
minimum becomes a rejected candidate whose reason says so, so the ledger explains every second.
"""

from __future__ import annotations

from dataclasses import dataclass

from reelflow.curation.policy import ClipPolicy


@dataclass(frozen=True)
class PlannedClip:
    shot_index: int
    clip_index: int
    start_s: float
    end_s: float
    reason: str | None = None  # None: a candidate to extract; else why it was rejected

    @property
    def duration_s(self) -> float:
        return round(self.end_s - self.start_s, 6)


def plan_clips(shots: list[tuple[float, float]], cfg: ClipPolicy) -> list[PlannedClip]:
    out: list[PlannedClip] = []
    last = len(shots) - 1
    for i, (a, b) in enumerate(shots):
        # Trim only edges that touch a cut: frames there may belong to the transition.
        start = a + (cfg.trim_shot_edges_s if i > 0 else 0.0)
        end = b - (cfg.trim_shot_edges_s if i < last else 0.0)
        if i == 0 and cfg.skip_video_start_s:
            start = max(start, cfg.skip_video_start_s)
        length = end - start
        if length + 1e-6 < cfg.min_seconds:
            out.append(
                PlannedClip(i, 0, round(a, 3), round(b, 3),
                            reason=f"shot_too_short: {max(length, 0):.2f}s<{cfg.min_seconds}s")
            )
            continue
        for j, (s, e) in enumerate(_windows(start, end, cfg)):
            out.append(PlannedClip(i, j, round(s, 3), round(e, 3)))
    return out


def _windows(start: float, end: float, cfg: ClipPolicy) -> list[tuple[float, float]]:
    length = end - start
    if length <= cfg.max_seconds:
        return [(start, end)]
    if cfg.max_per_shot == 1:
        # One clip per shot (Movie Gen): take it from the middle, away from both edges.
        mid = (start + end) / 2
        return [(mid - cfg.max_seconds / 2, mid + cfg.max_seconds / 2)]
    wins: list[tuple[float, float]] = []
    s = start
    while s + cfg.min_seconds <= end + 1e-6 and len(wins) < cfg.max_per_shot:
        e = min(s + cfg.max_seconds, end)
        wins.append((s, e))
        s = e
    return wins
