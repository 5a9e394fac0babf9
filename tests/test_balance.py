"""Concept balancing: k-means clusters of embeddings, merged near-duplicate clusters, and sampling
weights proportional to 1/sqrt(cluster size) (Movie Gen)."""

from __future__ import annotations

import numpy as np
import pytest

from reelflow.curation.balance import BalanceConfig, cluster, sampling_weights, weights_from_clusters


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


def _caption_rows(n: int, seed: int = 3) -> list[dict]:
    """Caption-table rows (clip and caption embeddings from a few concepts of uneven size, two of
    them near-duplicates so merging acts), in no particular key order."""
    from reelflow.curation.records import clip_key

    rng = np.random.default_rng(seed)
    video, _ = _blobs([n // 2, n // 4, n // 8, n - n // 2 - n // 4 - n // 8], d=16, spread=0.05, seed=seed)
    video[: n // 16] = video[n // 2 + 1] + 1e-3 * rng.standard_normal((n // 16, 16))  # a near-duplicate concept
    text, _ = _blobs([n // 3, n - n // 3], d=8, spread=0.1, seed=seed + 1)
    rows = []
    for i in rng.permutation(n).tolist():
        rows.append({"run_id": "r", "item_id": clip_key(f"v{i % 13:03d}", i, 0), "kind": "clip",
                     "parent_id": f"v{i % 13:03d}", "source_uri": "/s", "stage": "caption", "status": "ok",
                     "clip_embedding": video[i].tolist(), "caption_embedding": text[i].tolist(),
                     "start_s": 0.0, "end_s": 4.0, "duration_s": 4.0, "clip_uri": f"/clips/{i}.mp4",
                     "caption": "FPS-24 a clip"})
    rows.append({**rows[0], "item_id": "vzzz_s0000_c00", "status": "failed", "reason": "caption: timeout"})
    return rows


@pytest.mark.parametrize("variant", ["both embeddings", "caption embedding missing on one clip", "disabled"])
def test_balance_on_the_workers_matches_the_driver(tmp_path, ray_session, variant):
    """The distributed balance stage (survey, fit on the sample, assignment as a map, write)
    gives BalanceStage's cluster ids and sizes on a small table, and its weights to rounding."""
    import json

    from reelflow.curation import pipeline, table_gates
    from reelflow.curation.policy import demo_policy, policy_from_dict
    from reelflow.curation.stage_store import StageStore
    from reelflow.curation.storage import Storage
    from reelflow.curation.table_stages import BalanceStage

    rows = _caption_rows(240)
    if variant == "caption embedding missing on one clip":
        rows[5]["caption_embedding"] = None
    base = json.loads(demo_policy().model_dump_json())
    got = {}
    for name, max_rows in (("driver", 20_000), ("workers", 0)):
        policy = policy_from_dict({**base, "balance": {**base["balance"], "enabled": variant != "disabled"},
                                   "runtime": {**base["runtime"], "driver_max_rows": max_rows}})
        store = StageStore(Storage(), str(tmp_path / name))
        for k in range(0, len(rows), 50):
            store.write_part("caption", rows[k:k + 50])
        run = pipeline.run_table_stage(BalanceStage.for_policy(policy), store)
        assert (run.inputs, run.processed) == (240, 240)
        table_gates.check_stage_table("balance", store, "caption", "item_id", policy)
        got[name] = sorted(store.read("balance").to_pylist(), key=lambda r: r["item_id"])
        if name == "workers":
            assert pipeline.run_table_stage(BalanceStage.for_policy(policy), store).skipped == 240
    drv, wrk = got["driver"], got["workers"]
    assert [r["cluster_id"] for r in wrk] == [r["cluster_id"] for r in drv]
    assert [r["cluster_size"] for r in wrk] == [r["cluster_size"] for r in drv]
    np.testing.assert_allclose([r["sampling_weight"] for r in wrk], [r["sampling_weight"] for r in drv], rtol=1e-12)
    strip = lambda r: {k: v for k, v in r.items() if k != "sampling_weight"}  # noqa: E731
    assert [strip(r) for r in wrk] == [strip(r) for r in drv]
    if variant == "disabled":
        assert {r["sampling_weight"] for r in drv} == {1.0}
    else:
        assert 3 <= len({r["cluster_id"] for r in drv}) < 20  # real clusters, some merged
