"""Duplicate groups: connected components over pairs, and the one member each group keeps.

Pairs are edges; a group is a connected component (so A~B and B~C put A, B, C in one group even
when A and C are not similar). Each group keeps its best member - highest quality score, then
longest duration, then smallest key, so the choice is deterministic - and every other member
points straight at the kept one (never along a chain).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """``(n,)`` int64 component label of each of ``n`` items linked by edges ``(i[k], j[k])``
    (union-find semantics; scipy's linear-time graph traversal)."""
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    if n == 0:
        return np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(i.size, dtype=np.int8), (i, j)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def keep_best(
    labels: np.ndarray,
    quality: np.ndarray,
    duration: np.ndarray,
    keys: Sequence[str] | np.ndarray,
) -> np.ndarray:
    """``(n,)`` int64: for each item, the index of the member its group keeps (itself if kept).

    Rank inside a group: quality descending (NaN = worst), then duration descending (NaN = worst),
    then key ascending. Keys must be unique; any sortable array works (strings, or their integer
    ranks, which sort much faster).
    """
    _, labels = np.unique(np.asarray(labels, dtype=np.int64), return_inverse=True)  # -> 0..L-1
    n = labels.size
    if n == 0:
        return np.zeros(0, np.int64)
    q = np.asarray(quality, dtype=np.float64)
    d = np.asarray(duration, dtype=np.float64)
    q, d = np.where(np.isnan(q), -np.inf, q), np.where(np.isnan(d), -np.inf, d)
    k = np.asarray(keys)
    if k.dtype.kind not in "iu":
        k = k.astype(str)
    if np.unique(k).size != n:
        raise ValueError("keys must be unique")
    order = np.lexsort((k, -d, -q, labels))  # last key is the primary one
    lab = labels[order]
    first = np.ones(n, dtype=bool)
    first[1:] = lab[1:] != lab[:-1]
    kept_of_label = np.empty(lab[-1] + 1, dtype=np.int64)
    kept_of_label[lab[first]] = order[first]
    return kept_of_label[labels]
