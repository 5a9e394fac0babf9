"""Deduplication: exact -> near -> semantic, each level on the survivors of the one before.

``run_dedup`` takes one row per candidate clip (parallel arrays) and returns one ``DedupDecision``
per clip to drop. Levels and their similarity (``DedupDecision.similarity``, always measured
between the dropped clip and the member its group keeps):

``exact``     same ``content_signature`` (decoded content, quantised); similarity 1.0.
``near``      pHash frame sequences agree (``near.agreement``, fraction of sampled frames with a
              close partner, [0, 1]); catches re-encodes, rescales, small crops.
``semantic``  embedding cosine >= threshold inside a k-means partition (SemDedup); similarity =
              cosine in [-1, 1]. Movie Gen's copy-detection dedup uses cosine >= 0.99.

Groups are connected components of each level's pairs, so in a chain A~B~C the dropped member's
similarity to the kept one can be below the level's threshold. Each group keeps its best member
(quality, then duration, then key - see ``groups.keep_best``); the others point at it directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from reelflow.curation.dedup.exact import ExactConfig, exact_groups
from reelflow.curation.dedup.groups import components, keep_best
from reelflow.curation.dedup.near import NearConfig, agreement, near_pairs
from reelflow.curation.dedup.semantic import (
    MapPartitions,
    SemanticConfig,
    l2_normalize,
    local_map_partitions,
    ray_map_partitions,
    semantic_pairs,
)
from reelflow.curation.dedup.signatures import content_signature, frame_phashes

__all__ = [
    "DedupConfig",
    "DedupDecision",
    "ExactConfig",
    "NearConfig",
    "SemanticConfig",
    "agreement",
    "components",
    "content_signature",
    "exact_groups",
    "frame_phashes",
    "keep_best",
    "local_map_partitions",
    "near_pairs",
    "ray_map_partitions",
    "run_dedup",
    "semantic_pairs",
]

LEVELS = ("exact", "near", "semantic")


@dataclass(frozen=True)
class DedupConfig:
    exact: ExactConfig = field(default_factory=ExactConfig)
    near: NearConfig = field(default_factory=NearConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)  # Movie Gen: cosine >= 0.99


@dataclass(frozen=True)
class DedupDecision:
    key: str  # the clip dropped
    level: str  # "exact" | "near" | "semantic"
    duplicate_of: str  # key of the clip its group keeps
    similarity: float  # to the kept clip, in the level's unit (see module docstring)


def _decisions(
    level: str,
    alive: np.ndarray,
    labels: np.ndarray,
    keys: np.ndarray,
    rank: np.ndarray,
    quality: np.ndarray,
    duration: np.ndarray,
    similarity,
) -> tuple[list[DedupDecision], np.ndarray]:
    """Decisions for the alive rows grouped by ``labels``; returns them and the rows still alive."""
    kept = alive[keep_best(labels, quality[alive], duration[alive], rank[alive])]
    drop = kept != alive
    rows, to = alive[drop], kept[drop]
    sims = similarity(rows, to) if rows.size else np.zeros(0)
    out = [
        DedupDecision(str(keys[r]), level, str(keys[t]), float(s))
        for r, t, s in zip(rows.tolist(), to.tolist(), np.asarray(sims).tolist())
    ]
    return out, alive[~drop]


def run_dedup(
    keys: Sequence[str],
    quality: Sequence[float] | np.ndarray,
    duration: Sequence[float] | np.ndarray,
    signatures: Sequence[str | None] | None,
    phashes: np.ndarray | None,
    embeddings: np.ndarray | None = None,
    cfg: DedupConfig = DedupConfig(),
    map_partitions: MapPartitions | None = None,
) -> list[DedupDecision]:
    """Decisions for every clip to drop, in level order (exact, near, semantic), then by key.

    ``keys`` (unique), ``quality`` (higher is better; NaN = worst) and ``duration`` (seconds) are
    per clip; ``signatures`` (``content_signature``), ``phashes`` (``(n, F)`` uint64 from
    ``frame_phashes``) and ``embeddings`` (``(n, d)``) feed the exact, near and semantic levels; a
    level whose input is None, or whose config is disabled, is skipped. ``map_partitions`` runs the
    semantic level's per-partition work (``ray_map_partitions`` for Ray; default in-process).
    """
    k = np.asarray(keys, dtype=str).reshape(-1)
    n = k.size
    q = np.asarray(quality, dtype=np.float64).reshape(-1)
    d = np.asarray(duration, dtype=np.float64).reshape(-1)
    for name, arr in (("quality", q), ("duration", d)):
        if arr.size != n:
            raise ValueError(f"{name} has {arr.size} values for {n} keys")
    # Rank of each key in sorted order: ties inside a group are broken by it (one string sort for
    # all levels instead of one per level).
    uniq, rank = np.unique(k, return_inverse=True)
    if uniq.size != n:
        raise ValueError("keys must be unique")
    alive = np.arange(n, dtype=np.int64)
    out: list[DedupDecision] = []

    if cfg.exact.enabled and signatures is not None:
        if len(signatures) != n:
            raise ValueError(f"{len(signatures)} signatures for {n} keys")
        labels = exact_groups(signatures)
        got, alive = _decisions("exact", alive, labels, k, rank, q, d, lambda a, b: np.ones(a.size))
        out += sorted(got, key=lambda x: x.key)

    if cfg.near.enabled and phashes is not None and alive.size > 1:
        ph = np.asarray(phashes, dtype=np.uint64)
        if ph.shape[0] != n:
            raise ValueError(f"{ph.shape[0]} phash rows for {n} keys")
        i, j, _ = near_pairs(ph[alive], cfg.near)
        labels = components(alive.size, i, j)
        sim = lambda a, b: agreement(ph[a], ph[b], cfg.near.max_hamming, cfg.near.max_shift)  # noqa: E731
        got, alive = _decisions("near", alive, labels, k, rank, q, d, sim)
        out += sorted(got, key=lambda x: x.key)

    if cfg.semantic.enabled and embeddings is not None and alive.size > 1:
        emb = np.asarray(embeddings)
        if emb.shape[0] != n:
            raise ValueError(f"{emb.shape[0]} embedding rows for {n} keys")
        sub = emb if alive.size == n else emb[alive]  # no copy of the (large) array when nothing was dropped yet
        i, j, _ = semantic_pairs(sub, cfg.semantic, map_partitions)
        labels = components(alive.size, i, j)
        sim = lambda a, b: np.einsum("ij,ij->i", l2_normalize(emb[a]), l2_normalize(emb[b]))  # noqa: E731
        got, alive = _decisions("semantic", alive, labels, k, rank, q, d, sim)
        out += sorted(got, key=lambda x: x.key)
    return out
