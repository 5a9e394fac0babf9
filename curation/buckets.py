"""Aspect-ratio x duration buckets (Movie Gen trains on 5 aspect ratios x 5 duration buckets).

Bucket names become directory names under ``shards/``: letters, digits, ``x``, ``-`` and ``p``
(for a decimal point), never a dot or a slash.
"""

from __future__ import annotations

import math

from reelflow.curation.policy import BucketPolicy


def aspect_bucket(width: int, height: int, cfg: BucketPolicy) -> str:
    """The named ratio nearest to width/height, measured in log space (2:1 is as far from 1:1 as 1:2)."""
    r = math.log(width / height)
    return min(cfg.aspect_ratios.items(), key=lambda kv: abs(math.log(kv[1]) - r))[0]


def _num(x: float) -> str:
    return f"{x:g}".replace(".", "p")


def duration_bucket(duration_s: float, cfg: BucketPolicy) -> str:
    edges = cfg.duration_edges_s
    i = 0
    while i < len(edges) - 2 and duration_s >= edges[i + 1]:
        i += 1
    return f"{_num(edges[i])}-{_num(edges[i + 1])}s"


def bucket_name(width: int, height: int, duration_s: float, cfg: BucketPolicy) -> tuple[str, str, str]:
    a, d = aspect_bucket(width, height, cfg), duration_bucket(duration_s, cfg)
    return a, d, f"{a}_{d}"
