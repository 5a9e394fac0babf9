"""The dedup stage on the workers (``curation.dedup_stage``) decides what ``DedupStage`` decides in
the driver: every level, on a score table with planted exact, near and semantic copies, chains,
a bucket of one shared frame hash longer than the near index's window, missing quality scores and
missing signatures. Then its gate joins ``duplicate_of`` against the inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reelflow.curation.records import clip_key

N = 2600  # above semantic.single_partition_below: the k-means partitions and their shuffle run


def _score_rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    ph = rng.integers(0, 2**63, size=(n, 8), dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    emb = rng.standard_normal((n, 16)).astype(np.float32)
    sig = [f"sig{i:05d}" for i in range(n)]
    quality = rng.uniform(0, 10, n)
    quality[rng.random(n) < 0.1] = np.nan
    duration = rng.choice([2.0, 3.0, 4.0], n)

    def flip(h: np.ndarray, bits: int) -> np.ndarray:
        out = h.copy()
        for f in range(out.size):
            for b in rng.choice(64, bits, replace=False):
                out[f] ^= np.uint64(1) << np.uint64(int(b))
        return out

    for i in range(0, 300, 3):  # exact copies, in pairs and triples
        sig[i + 1] = sig[i]
        if i % 2:
            sig[i + 2] = sig[i]
    for i in range(300, 700, 4):  # near copies: a few bits off, one of them one sample late
        ph[i + 1] = flip(ph[i], 3)
        ph[i + 2] = np.roll(flip(ph[i], 2), 1)
        ph[i + 3] = flip(ph[i + 2], 2)  # a chain through i + 2
    ph[700:760, 0] = ph[700, 0]  # 60 clips share one frame (a black frame): candidates, not duplicates
    for i in range(800, 1100, 3):  # semantic copies: cosine > 0.999, frames unrelated
        emb[i + 1] = emb[i] + 1e-3 * rng.standard_normal(16)
        emb[i + 2] = emb[i + 1] + 1e-3 * rng.standard_normal(16)
    rows = []
    for i in rng.permutation(n).tolist():
        rows.append({"run_id": "r", "item_id": clip_key(f"v{i % 17:03d}", i, 0), "kind": "clip",
                     "parent_id": f"v{i % 17:03d}", "source_uri": "/s", "stage": "score", "status": "ok",
                     "start_s": 0.0, "end_s": float(duration[i]), "duration_s": float(duration[i]),
                     "content_signature": None if i % 97 == 5 else sig[i], "phashes": ph[i].tolist(),
                     "clip_embedding": emb[i].tolist(), "sharpness": float(i % 7),
                     "aesthetic_score": None if np.isnan(quality[i]) else float(quality[i])})
    rows.append({**rows[0], "item_id": "vzzz_s0000_c00", "status": "rejected", "reason": "static"})
    return rows


def _policy(base: dict, max_rows: int, **dedup):
    from reelflow.curation.policy import policy_from_dict

    return policy_from_dict({**base, "dedup": {**base["dedup"], **dedup},
                             "runtime": {**base["runtime"], "driver_max_rows": max_rows}})


@pytest.mark.parametrize("variant", ["every level", "no quality scores, one clip without frame hashes"])
def test_dedup_on_the_workers_matches_the_driver(tmp_path, ray_session, variant):
    from reelflow.curation import dedup_stage, pipeline, table_gates
    from reelflow.curation.policy import demo_policy
    from reelflow.curation.stage_store import StageStore
    from reelflow.curation.storage import Storage
    from reelflow.curation.table_stages import DedupStage

    rows = _score_rows(N)
    if variant != "every level":
        for r in rows:
            r["aesthetic_score"] = None
        rows[7]["phashes"] = None
    base = json.loads(demo_policy().model_dump_json())
    got = {}
    for name, max_rows in (("driver", 20_000), ("workers", 0)):
        policy = _policy(base, max_rows, semantic={**base["dedup"]["semantic"], "enabled": True, "threshold": 0.99})
        store = StageStore(Storage(), str(tmp_path / name))
        for k in range(0, len(rows), 400):
            store.write_part("score", rows[k:k + 400])
        if name == "driver":
            n = pipeline.run_table_stage(DedupStage.for_policy(policy), store).inputs
        else:  # three-way shuffles: buckets, signatures and partitions split across reduces
            n, _ = dedup_stage.run_distributed(policy, store, partitions=3)
        assert n == N
        table_gates.check_stage_table("dedup", store, "score", "item_id", policy)
        got[name] = sorted(store.read("dedup").to_pylist(), key=lambda r: r["item_id"])
        if name == "workers":
            assert pipeline.run_table_stage(DedupStage.for_policy(policy), store).skipped == N
    drv, wrk = got["driver"], got["workers"]
    levels = {lv: sum(r["dedup_level"] == lv for r in drv) for lv in ("exact", "near", "semantic")}
    if variant == "every level":
        assert levels["exact"] >= 100 and levels["near"] >= 150 and levels["semantic"] >= 150, levels
    else:
        assert levels["near"] == 0 and levels["exact"] >= 100, levels
    strip = lambda r: {k: v for k, v in r.items() if k != "dedup_similarity"}  # noqa: E731
    assert [strip(r) for r in wrk] == [strip(r) for r in drv]
    np.testing.assert_allclose([r["dedup_similarity"] or 0 for r in wrk], [r["dedup_similarity"] or 0 for r in drv],
                               rtol=1e-6)


def test_dedup_gate_on_the_workers_names_a_duplicate_of_outside_the_inputs(tmp_path, ray_session):
    from reelflow.curation import pipeline, ray_tables, table_gates
    from reelflow.curation.gates import GateFailed
    from reelflow.curation.policy import demo_policy
    from reelflow.curation.stage_store import StageStore
    from reelflow.curation.storage import Storage
    from reelflow.curation.table_stages import DedupStage

    policy = _policy(json.loads(demo_policy().model_dump_json()), 0)
    store = StageStore(Storage(), str(tmp_path))
    store.write_part("score", _score_rows(1200))
    pipeline.run_table_stage(DedupStage.for_policy(policy), store)
    table_gates.check_stage_table("dedup", store, "score", "item_id", policy)  # as written, it passes
    table = store.read("dedup")
    rows = table.to_pylist()
    bad = next(r for r in rows if r["status"] == "rejected")
    bad["duplicate_of"] = "v999_s0000_c00"
    store.clear("dedup")
    store.write_part("dedup", rows)
    with pytest.raises(GateFailed) as e:
        table_gates.check_stage_table("dedup", store, "score", "item_id", policy)
    assert "duplicate_of" in str(e.value) and "v999_s0000_c00" in str(e.value)
    # The same check as a hash join (beyond runtime.broadcast_join_max_ids ids): only the
    # reference check here; the id audits' joins are timed once, in test_table_gates.
    inputs = ray_tables.read_table(store, "score", columns=["item_id"], ok_only=True)
    (f,) = table_gates._reference_failures("dedup", store, inputs, small=False)
    assert f.rows == ["v999_s0000_c00"] and f.total == 1 and f.kwargs["column"] == "duplicate_of"
