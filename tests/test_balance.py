"""Concept balancing: k-means clusters of embeddings, merged near-duplicate clusters, and sampling
weights proportional to 1/sqrt(cluster size) (Movie Gen)."""

from __future__ import annotations

import numpy as np
import pytest

from curation.balance import BalanceConfig, cluster, sampling_weights, weights_from_clusters


def _blobs(sizes: list[int], d: int = 64, spread: float = 0.02, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tight clusters (cosine ~0.97 inside) around random, nearly orthogonal directions; returns
    (emb, true labels)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(sizes), d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    emb = np.concatenate([c + spread * rng.standard_normal((s, d)) for c, s in zip(centres, sizes)])
    labels = np.repeat(np.arange(len(sizes)), sizes)
    perm = rng.permutation(labels.size)  # interleave, so order carries no hint
    return emb[perm].astype(np.float32), labels[perm]


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize(
    "cfg", [BalanceConfig(n_clusters=3), BalanceConfig()], ids=["k=3", "default k=sqrt(n)+merge"]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weights_follow_inverse_sqrt_cluster_size(cfg, seed):
    emb, truth = _blobs([100, 25, 4], seed=seed)
    ids, w = sampling_weights(emb, cfg)
    # The 4-clip concept gets its own cluster (k-means++ seeding); with the default k = 11 the
    # over-split concepts are merged back (near-duplicate centroids).
    assert _same_partition(ids, truth)
    per_cluster = {int(t): float(w[truth == t][0]) for t in range(3)}
    assert all(np.allclose(w[truth == t], per_cluster[t]) for t in range(3))
    ratio = np.array([per_cluster[0], per_cluster[1], per_cluster[2]]) / per_cluster[0]
    np.testing.assert_allclose(ratio, [1.0, 2.0, 5.0], rtol=1e-9)  # 1/sqrt(100) : 1/sqrt(25) : 1/sqrt(4)
    assert w.mean() == pytest.approx(1.0)
    # Each concept's total sampling mass grows as sqrt(size), not size.
    mass = np.array([w[truth == t].sum() for t in range(3)])
    np.testing.assert_allclose(mass / mass[2], np.sqrt([100, 25, 4]) / 2, rtol=1e-9)


def test_near_duplicate_clusters_are_merged():
    emb, truth = _blobs([60, 60, 60], seed=1)
    split = cluster(emb, BalanceConfig(n_clusters=9, merge_threshold=None))
    merged = cluster(emb, BalanceConfig(n_clusters=9, merge_threshold=0.95))
    assert len(set(split.tolist())) > 3  # k-means over-splits the three concepts ...
    assert _same_partition(merged, truth)  # ... and merging near-duplicate centroids undoes it
    assert sorted(set(merged.tolist())) == [0, 1, 2]  # ids are compact


def test_deterministic():
    emb, _ = _blobs([50, 30, 20, 10], seed=2)
    a = sampling_weights(emb)
    b = sampling_weights(emb.copy())
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_small_inputs():
    ids, w = sampling_weights(np.zeros((0, 8), np.float32))
    assert ids.shape == (0,) and w.shape == (0,)
    ids, w = sampling_weights(np.ones((1, 8), np.float32))
    assert ids.tolist() == [0] and w.tolist() == [1.0]
    emb, _ = _blobs([2, 1], seed=3)  # fewer rows than clusters asked for
    ids, w = sampling_weights(emb, BalanceConfig(n_clusters=10, merge_threshold=None))
    assert ids.shape == (3,) and w.mean() == pytest.approx(1.0) and (w > 0).all()
    with pytest.raises(ValueError):
        sampling_weights(np.ones(8))


def test_weights_from_clusters():
    w = weights_from_clusters(np.array([0, 0, 0, 0, 1]))
    np.testing.assert_allclose(w[4] / w[0], 2.0)
    assert w.mean() == pytest.approx(1.0)
