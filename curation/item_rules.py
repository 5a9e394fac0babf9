"""Per-item range rules: every range a gate enforces on passing rows, applied first in the stage.

A value that a single file may legitimately carry (2000 fps, a 45 degree display matrix, a
20000 px wide frame) must reject that item with a reason, not stop the run at the gate. So the
ranges live here once: ``Stage.run_row`` applies them to every row it passes on, and
``gates.common_expectations`` builds its range expectations from the same list, so a gate can only
fail on a passing row if a stage let a bad value through (a systematic bug, which should stop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from reelflow.curation.policy import Policy
from reelflow.curation.records import CLIP_STAGES, ENCODED_STAGES, SCORED_STAGES
from reelflow.curation.scoring.camera_motion import CAMERA_LABELS

# Clip tables, in pipeline order (clips .. shard); those whose rows carry scores; those whose ok
# rows have an encoded clip (extract onwards: judge before encode).
CLIP_TABLES = CLIP_STAGES
VIDEO_TABLES = ("probe", "filter", "shots", *CLIP_TABLES)
SCORED_TABLES = SCORED_STAGES
ENCODED_TABLES = ENCODED_STAGES

# Valid range of each score (units: curation/scoring/*). NaN (not computed) is not judged.
SCORE_RANGES = {
    "motion_mean": (0, 1e4), "motion_max": (0, 1e4), "static_fraction": (0, 1), "static_longest_s": (0, 1e5),
    "static": (0, 1), "cut_count": (0, 1e6), "cuts_per_s": (0, 1e3),
    "border_top": (0, 1), "border_bottom": (0, 1), "border_left": (0, 1), "border_right": (0, 1),
    "border_fraction": (0, 1), "sharpness": (0, 1e8), "mean_luma": (0, 1), "dark_clipped": (0, 1),
    "bright_clipped": (0, 1), "text_conf_max": (0, 1), "text_area_max": (0, 1), "text_area_mean": (0, 1),
    "audio_has_audio": (0, 1), "audio_loudness_dbfs": (-120, 0.01), "audio_silent_fraction": (0, 1),
    "audio_speech_fraction": (0, 1), "audio_has_speech": (0, 1), "aesthetic_score": (-100, 100),
    "audio_music_prob": (0, 1), "audio_speech_prob": (0, 1), "audio_top_label_prob": (0, 1),
    "camera_confidence": (0, 1),
}
ROTATIONS = (0, 90, 180, 270)


@dataclass(frozen=True)
class Range:
    """``lo <= value <= hi`` (``lo < value`` when ``strict_lo``); a bound of None is open."""

    column: str
    label: str  # what the reason calls the value: "fps" rather than "src_fps"
    lo: float | None = None
    hi: float | None = None
    strict_lo: bool = False

    def violation(self, value) -> str | None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None  # not computed: judged by the not-null expectations, not here
        v = float(value)
        if (self.lo is not None and (v <= self.lo if self.strict_lo else v < self.lo)) or (
                self.hi is not None and v > self.hi):
            lo = "" if self.lo is None else f"{_num(self.lo)}{' (exclusive)' if self.strict_lo else ''}"
            hi = "" if self.hi is None else _num(self.hi)
            span = f"{lo}–{hi}" if lo and hi else (f">= {lo}" if lo else f"<= {hi}")
            return f"{self.label}={_num(v)} outside {span}"
        return None


@dataclass(frozen=True)
class OneOf:
    column: str
    label: str
    values: tuple

    def violation(self, value) -> str | None:
        if value is None or value in self.values:
            return None
        return f"{self.label}={value!r} not one of {', '.join(map(str, self.values))}"


Rule = Range | OneOf


def _num(x: float) -> str:
    return f"{x:g}" if abs(x) < 1e7 else f"{x:.3g}"


def ok_row_rules(stage: str, policy: Policy) -> list[Rule]:
    """The rules every ``ok`` row of ``stage``'s table satisfies (and its gate checks)."""
    lim = policy.limits
    rules: list[Rule] = []
    if stage in VIDEO_TABLES:
        rules += [
            Range("src_width", "width", 1, lim.max_width),
            Range("src_height", "height", 1, lim.max_height),
            Range("src_fps", "fps", lim.min_fps, lim.max_fps),
            Range("src_duration_s", "duration_s", 0, lim.max_duration_s, strict_lo=True),
            OneOf("rotation", "rotation", ROTATIONS),
        ]
    if stage in CLIP_TABLES:
        c = policy.clips
        rules.append(Range("duration_s", "clip_duration_s", c.min_seconds - 1e-3, c.max_seconds + 1e-3))
    if stage in ENCODED_TABLES:
        rules += [
            Range("width", "clip_width", 2, lim.max_width),
            Range("height", "clip_height", 2, lim.max_height),
            Range("fps", "clip_fps", lim.min_fps, lim.max_fps),
            Range("frames", "clip_frames", 1, lim.max_frames),
        ]
    if stage in SCORED_TABLES:
        rules += [Range(col, col, lo, hi) for col, (lo, hi) in SCORE_RANGES.items()]
    if stage == "score" and policy.scoring.enabled:
        rules.append(OneOf("camera_motion", "camera_motion", tuple(CAMERA_LABELS)))
    return rules


def check_row(stage: str, row: dict, policy: Policy) -> str | None:
    """The first rule an ``ok`` row breaks, as a ledger reason (``probe: fps=2000 outside 1–240``)."""
    for rule in ok_row_rules(stage, policy):
        if rule.column in row:
            why = rule.violation(row[rule.column])
            if why:
                return f"{stage}: {why}"
    return None
