"""Quality rules: a policy's thresholds applied to a clip's scores, in policy order.

A failure reads ``rule: score=value<min`` or ``rule: score=value>=max`` so the ledger says which
rule removed a clip and by how much (e.g. ``text: text_conf_max=0.87>=0.6``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from reelflow.curation.policy import ScoringPolicy


@dataclass(frozen=True)
class RuleFailure:
    rule: str
    text: str
    score_only: bool


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def apply_rules(scores: dict[str, float], policy: ScoringPolicy) -> list[RuleFailure]:
    out: list[RuleFailure] = []
    for name, column, rule in policy.rules():
        if not rule.enabled:
            continue
        v = scores.get(column)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue  # disabled scorer or not applicable: not judged
        if rule.min is not None and v < rule.min:
            out.append(RuleFailure(name, f"{name}: {column}={_fmt(v)}<{_fmt(rule.min)}", rule.score_only))
        elif rule.max is not None and v >= rule.max:
            out.append(RuleFailure(name, f"{name}: {column}={_fmt(v)}>={_fmt(rule.max)}", rule.score_only))
    return out


def verdict(failures: list[RuleFailure]) -> tuple[bool, str | None, str | None]:
    """(rejected, ledger reason, all failures joined). Score-only failures never reject."""
    rejecting = [f for f in failures if not f.score_only]
    joined = "; ".join(f.text + (" (score only)" if f.score_only else "") for f in failures) or None
    return bool(rejecting), (rejecting[0].text if rejecting else None), joined
