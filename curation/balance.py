"""Concept balancing: a sampling weight per clip from clusters of its embedding (Movie Gen).

Movie Gen clusters video-text embeddings, merges near-duplicate clusters, and samples each cluster
in proportion to 1/sqrt(its size), so that common concepts are down-weighted and rare ones up-weighted
without throwing either away.

``sampling_weights(emb, cfg)`` returns, per clip:

``cluster_ids``  int64 in [0, m): the (merged) concept cluster, numbered by first appearance.
``weights``      float64 > 0: 1/sqrt(size of the clip's cluster), scaled so the mean over clips is
                 1.0 - a clip in a cluster of 100 weighs half as much as one in a cluster of 25,
                 and a cluster's total mass grows as sqrt(size) instead of size.

k-means is faiss's (spherical, on L2-normalised rows) seeded with k-means++ (scikit-learn) on a
sample, so small concepts get a centroid of their own; everything runs from ``cfg.seed``, so the same
input gives the same output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from reelflow.curation.dedup.groups import components
from reelflow.curation.dedup.semantic import l2_normalize, nearest_centroids, spherical_kmeans


@dataclass(frozen=True)
class BalanceConfig:
    n_clusters: int | None = None  # None: round(sqrt(n)) clamped to [1, max_clusters]
    max_clusters: int = 100_000
    # Merge clusters whose centroids have cosine >= this (Movie Gen merges near-duplicate
    # clusters; the figure is ours, the paper gives none). None disables merging.
    merge_threshold: float | None = 0.95
    kmeans_iters: int = 25
    init_sample: int = 50_000  # rows the k-means++ seeding looks at (cost: k * trials * sample * d)
    # Candidates per k-means++ step (scikit-learn's default is 2 + ln k, ~3 for small k): more
    # trials make it far likelier that a small, distant concept gets a seed of its own.
    init_trials: int = 16
    max_points_per_centroid: int = 256  # faiss trains on at most k * this many sampled rows
    seed: int = 1234


def _relabel_by_first_appearance(labels: np.ndarray) -> np.ndarray:
    _, first, inv = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inv]


def n_clusters(n: int, cfg: BalanceConfig) -> int:
    k = cfg.n_clusters if cfg.n_clusters is not None else round(math.sqrt(n))
    return max(1, min(int(k), cfg.max_clusters, n))


def fit_centroids(x: np.ndarray, k: int, cfg: BalanceConfig) -> np.ndarray:
    """``(k, d)`` unit centroids of unit rows ``x``: k-means++ seeding on a sample, then faiss."""
    n = x.shape[0]
    rng = np.random.default_rng(cfg.seed)
    m = max(cfg.init_sample, k)  # seeding needs at least k rows
    sample = x if n <= m else x[np.sort(rng.choice(n, m, replace=False))]
    # Imported here: every Ray worker that runs a stage task imports this module (through the
    # pipeline), and scikit-learn with scipy cost each ~2 s of CPU that only balance's fit uses.
    from sklearn.cluster import kmeans_plusplus

    init, _ = kmeans_plusplus(sample, k, random_state=cfg.seed, n_local_trials=cfg.init_trials)
    return spherical_kmeans(x, k, cfg.kmeans_iters, cfg.seed, cfg.max_points_per_centroid,
                            init_centroids=l2_normalize(init))


def merge_lut(centroids: np.ndarray, used: np.ndarray, threshold: float | None) -> np.ndarray:
    """Cluster -> merged cluster (a representative label): clusters whose centroids have cosine
    >= ``threshold`` join one component. ``used``: the clusters with members (empty ones take
    no part in merging)."""
    k = centroids.shape[0]
    if threshold is None:
        return np.arange(k, dtype=np.int64)
    sims = centroids[used] @ centroids[used].T
    a, b = np.nonzero(np.triu(sims >= threshold, k=1))
    merged = components(used.size, a, b)
    lut = np.zeros(k, np.int64)
    lut[used] = merged
    return lut


def cluster(emb: np.ndarray, cfg: BalanceConfig = BalanceConfig()) -> np.ndarray:
    """``(n,)`` int64 concept cluster of each row, after merging near-duplicate clusters."""
    x = l2_normalize(emb)
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    k = n_clusters(n, cfg)
    if k == 1:
        return np.zeros(n, np.int64)
    cent = fit_centroids(x, k, cfg)
    labels = nearest_centroids(x, cent, 1)[:, 0]
    labels = merge_lut(cent, np.unique(labels), cfg.merge_threshold)[labels]
    return _relabel_by_first_appearance(labels)


def weights_from_clusters(cluster_ids: np.ndarray) -> np.ndarray:
    """Per-row 1/sqrt(cluster size), scaled to mean 1.0."""
    ids = np.asarray(cluster_ids, dtype=np.int64)
    if ids.size == 0:
        return np.zeros(0, np.float64)
    sizes = np.bincount(ids)[ids].astype(np.float64)
    w = 1.0 / np.sqrt(sizes)
    return w * (w.size / w.sum())


def sampling_weights(emb: np.ndarray, cfg: BalanceConfig = BalanceConfig()) -> tuple[np.ndarray, np.ndarray]:
    """``(cluster_ids, weights)`` for ``(n, d)`` embeddings; see the module docstring."""
    emb = np.asarray(emb)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be (n, d), got shape {emb.shape}")
    ids = cluster(emb, cfg)
    return ids, weights_from_clusters(ids)
