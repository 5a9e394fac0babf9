"""Basic filters: licence allowlist, minimum resolution, aspect ratio, duration.

Each check returns ``None`` when the item passes, else the rejection reason naming the rule
and the value (``short_side=240<720``), which goes verbatim into the ledger.
"""

from __future__ import annotations

from reelflow.curation.policy import LimitsPolicy, Policy


def check_license(license_id: str | None, policy: Policy) -> str | None:
    if not license_id:
        return "license: none declared (add a license column to the manifest or a sidecar .json)"
    if not policy.allows_license(license_id):
        return f"license: {license_id!r} not in allowlist"
    return None


def check_limits(row: dict, limits: LimitsPolicy) -> str | None:
    """Per-item limits on a probed file (``limits:`` in the policy): the reason names the limit.

    Ranges that the gates also check (fps, sides, duration, rotation) are in ``item_rules`` and
    applied to every passed row; these are the ones that no column carries directly."""
    w, h = int(row["src_width"]), int(row["src_height"])
    if w * h > limits.max_pixels:
        return f"probe: pixels={w}x{h}={w * h} over limits.max_pixels={limits.max_pixels}"
    frames = float(row["src_fps"]) * float(row["src_duration_s"])
    if frames > limits.max_frames:
        return f"probe: frames~{frames:.0f} over limits.max_frames={limits.max_frames}"
    return None


def check_video(row: dict, policy: Policy) -> str | None:
    """Video-level rules on probed metadata (dimensions already account for rotation)."""
    v = policy.video
    w, h = int(row["src_width"]), int(row["src_height"])
    short = min(w, h)
    if short < v.min_short_side:
        return f"resolution: short_side={short}<{v.min_short_side}"
    aspect = w / h
    if aspect < v.min_aspect:
        return f"aspect: {aspect:.3f}<{v.min_aspect:.3f}"
    if aspect > v.max_aspect:
        return f"aspect: {aspect:.3f}>{v.max_aspect:.3f}"
    dur = float(row["src_duration_s"])
    if dur < v.min_duration_s:
        return f"duration: {dur:.2f}s<{v.min_duration_s}s"
    if dur > v.max_duration_s:
        return f"duration: {dur:.2f}s>{v.max_duration_s}s"
    return None


def check_clip_duration(duration_s: float, policy: Policy) -> str | None:
    c = policy.clips
    # A hair of tolerance: frame rounding makes a 4 s clip 3.999 s at some frame rates.
    if duration_s + 1e-3 < c.min_seconds:
        return f"clip_duration: {duration_s:.2f}s<{c.min_seconds}s"
    if duration_s - 1e-3 > c.max_seconds:
        return f"clip_duration: {duration_s:.2f}s>{c.max_seconds}s"
    return None
