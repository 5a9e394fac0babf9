"""Exact duplicates: clips whose decoded content has the same ``content_signature``.

Input: one signature (hex string) per clip, or None / "" where none could be computed (such a clip
is in a group of its own). Output: an ``(n,)`` int64 group label per clip; equal labels = same
decoded content. Hashing makes this O(n log n) (one sort of the signatures).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ExactConfig:
    enabled: bool = True


def exact_groups(signatures: Sequence[str | None]) -> np.ndarray:
    """``(n,)`` int64 labels: clips with equal non-empty signatures share a label."""
    n = len(signatures)
    if n == 0:
        return np.zeros(0, np.int64)
    sig = np.array([s or "" for s in signatures], dtype=str)
    _, labels = np.unique(sig, return_inverse=True)
    labels = labels.astype(np.int64)
    missing = sig == ""
    # A clip without a signature matches nothing: give each one a fresh label.
    labels[missing] = labels.max() + 1 + np.arange(int(missing.sum()))
    return labels
