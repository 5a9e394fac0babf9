"""Concept balancing where the rows lie (#14 item 2): k-means fitted on a sample, assignment as a map.

``table_stages.BalanceStage`` reads every caption row into the driver. Beyond
``runtime.driver_max_rows`` the balance stage runs as four passes over the caption table instead,
the driver holding counts, the centroids and one entry per cluster:

1. survey: the workers count the ok rows and check which embedding columns every row has, at one
   length (the rule ``BalanceStage`` applies to its list);
2. fit: one Ray task gathers a sample of the rows' embeddings (all of them up to
   ``FIT_SAMPLE_MAX``, sorted by key as ``BalanceStage`` sorts them; beyond it a hash sample on
   the key) and fits the centroids (``balance.fit_centroids``);
3. assign: the workers label every row with its nearest centroid and return, per cluster, the
   count and the smallest key; the driver merges near-duplicate clusters (``balance.merge_lut``),
   numbers them by smallest key (= first appearance in key order) and derives the sizes and the
   normaliser of the 1/sqrt(size) weights;
4. write: the workers label the rows again and write the balance table's parts (``PartSink``).

Up to ``FIT_SAMPLE_MAX`` clips the result is ``BalanceStage``'s: the same cluster ids and sizes,
weights equal to float rounding (a test compares them).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from reelflow.curation import ray_tables
from reelflow.curation.balance import BalanceConfig, fit_centroids, merge_lut, n_clusters
from reelflow.curation.dedup.semantic import l2_normalize, nearest_centroids
from reelflow.curation.policy import Policy
from reelflow.curation.records import STAGE_SCHEMAS
from reelflow.curation.stage_store import StageStore

INPUT = "caption"
EMBEDDINGS = ("clip_embedding", "caption_embedding")  # BalanceStage's order: video, then caption
FIT_SAMPLE_MAX = 200_000  # rows the k-means fit sees (its memory: rows x dims x 4 bytes, one task)


def _matrix(batch: pa.Table, cols: tuple[str, ...]) -> np.ndarray:
    """BalanceStage's embedding of each row: the columns L2-normalised, concatenated, normalised."""
    parts = []
    for c in cols:
        col = batch[c].combine_chunks()
        p = np.asarray(pc.list_flatten(col).to_numpy(zero_copy_only=False), np.float32).reshape(len(col), -1)
        parts.append(p / np.linalg.norm(p, axis=1, keepdims=True).clip(1e-12))
    return l2_normalize(np.concatenate(parts, axis=1))


def _survey(batch: pa.Table) -> pa.Table:
    out: dict[str, list] = {"rows": [batch.num_rows]}
    for c in EMBEDDINGS:
        lens = pc.list_value_length(batch[c])
        out[f"{c}:nulls"] = [batch[c].null_count]
        out[f"{c}:min"] = [pc.min(lens).as_py()]
        out[f"{c}:max"] = [pc.max(lens).as_py()]
    return pa.table(out)


def _sample(batch: pa.Table, rate: float) -> pa.Table:
    if rate >= 1.0:
        return batch
    cut = int(rate * 2**32)
    keep = [zlib.crc32(k.encode()) < cut for k in batch["item_id"].to_pylist()]
    return batch.filter(pa.array(keep, pa.bool_()))


@ray.remote(num_cpus=1)
def _fit_task(cols: tuple[str, ...], k: int, cfg: BalanceConfig, *blocks: pa.Table) -> np.ndarray:
    t = pa.concat_tables([b for b in blocks if b.num_rows]).sort_by("item_id")
    return fit_centroids(_matrix(t, cols), k, cfg)


def _labels(batch: pa.Table, cols: tuple[str, ...], centroids) -> np.ndarray:
    if centroids is None:  # one cluster
        return np.zeros(batch.num_rows, np.int64)
    cent = ray.get(centroids) if isinstance(centroids, ray.ObjectRef) else centroids
    return nearest_centroids(_matrix(batch, cols), cent, 1)[:, 0]


def _assign(batch: pa.Table, cols: tuple[str, ...], centroids) -> pa.Table:
    t = pa.table({"label": _labels(batch, cols, centroids), "item_id": batch["item_id"]})
    return t.group_by("label").aggregate([("item_id", "count"), ("item_id", "min")])


@dataclass(frozen=True)
class Clusters:
    """What the write pass needs: each k-means label's final cluster id, and each cluster's size."""

    final: np.ndarray  # (k,) k-means label -> cluster id (numbered by smallest key)
    sizes: np.ndarray  # (m,) clips per cluster
    scale: float  # the weights' normaliser: mean weight 1 over the clips


def _write_rows(batch: pa.Table, cols: tuple[str, ...], centroids, clusters: Clusters | None) -> pa.Table:
    t = batch.set_column(batch.schema.get_field_index("stage"), "stage", pa.array(["balance"] * batch.num_rows))
    t = t.set_column(t.schema.get_field_index("reason"), "reason", pa.nulls(t.num_rows, pa.string()))
    if clusters is None:  # balancing off, or no embedding every clip has: weight 1, no cluster
        ids, sizes = pa.nulls(t.num_rows, pa.int32()), pa.nulls(t.num_rows, pa.int32())
        weights = pa.array(np.ones(t.num_rows), pa.float64())
    else:
        c = clusters.final[_labels(batch, cols, centroids)]
        size = clusters.sizes[c]
        ids, sizes = pa.array(c, pa.int32()), pa.array(size, pa.int32())
        weights = pa.array((1.0 / np.sqrt(size.astype(np.float64))) * clusters.scale, pa.float64())
    t = t.append_column("cluster_id", ids).append_column("cluster_size", sizes).append_column("sampling_weight", weights)
    return t.select(STAGE_SCHEMAS["balance"].names).cast(STAGE_SCHEMAS["balance"])


def run_distributed(policy: Policy, store: StageStore, progress: Callable[[int, int], None] | None = None
                    ) -> tuple[int, int]:
    """(ok inputs, of which skipped as already balanced); see the module doc."""
    rt, cfg = policy.runtime, policy.balance
    cols_read = ["item_id", "status", *EMBEDDINGS]
    survey = ray_tables.read_table(store, INPUT, columns=cols_read, ok_only=True)
    n, nulls, lmin, lmax = 0, dict.fromkeys(EMBEDDINGS, 0), {}, {}
    if survey is not None:
        for b in survey.map_batches(_survey, batch_format="pyarrow", batch_size=None).iter_batches(
                batch_size=None, batch_format="pyarrow"):
            n += pc.sum(b["rows"]).as_py() or 0
            for c in EMBEDDINGS:
                nulls[c] += pc.sum(b[f"{c}:nulls"]).as_py() or 0
                for v in b[f"{c}:min"].to_pylist():
                    lmin[c] = v if c not in lmin or (v is not None and v < lmin[c]) else lmin[c]
                for v in b[f"{c}:max"].to_pylist():
                    lmax[c] = v if c not in lmax or (v is not None and v > lmax[c]) else lmax[c]
    if store.finished("balance", INPUT) == n:
        return n, n
    store.clear("balance")
    if progress:
        progress(0, n)
    cols = tuple(c for c in EMBEDDINGS if n and nulls[c] == 0 and lmin.get(c) is not None and lmin[c] == lmax[c])
    bcfg = BalanceConfig(n_clusters=cfg.clusters, merge_threshold=cfg.merge_threshold, seed=cfg.seed)
    centroids, clusters = None, None
    if cfg.enabled and n and cols:
        k = n_clusters(n, bcfg)
        if k > 1:
            rate = min(1.0, FIT_SAMPLE_MAX / n)
            sample = ray_tables.read_table(store, INPUT, columns=["item_id", "status", *cols], ok_only=True)
            sample = sample.map_batches(_sample, fn_kwargs={"rate": rate}, batch_format="pyarrow", batch_size=None)
            centroids = _fit_task.remote(cols, k, bcfg, *sample.materialize().to_arrow_refs())
        else:
            k = 1
        clusters = _clusters(store, cols, centroids, k, bcfg, n)
    ds = ray_tables.read_table(store, INPUT, ok_only=True)
    if ds is not None and n:
        ds = ds.map_batches(_write_rows, fn_kwargs={"cols": cols, "centroids": centroids, "clusters": clusters},
                            batch_format="pyarrow", batch_size=None)
        written = ray_tables.write_parts(ds, store, "balance", "item_id", rt.part_rows,
                                         (lambda d: progress(d, n)) if progress else None)
        if written.inputs != n:
            raise RuntimeError(f"balance: wrote {written.inputs} rows for {n} clips; a write task failed")
    store.mark_finished("balance", INPUT, n)
    return n, 0


def _clusters(store: StageStore, cols: tuple[str, ...], centroids, k: int, cfg: BalanceConfig, n: int) -> Clusters:
    counts = np.zeros(k, np.int64)
    first: dict[int, str] = {}
    ds = ray_tables.read_table(store, INPUT, columns=["item_id", "status", *cols], ok_only=True)
    ds = ds.map_batches(_assign, fn_kwargs={"cols": cols, "centroids": centroids}, batch_format="pyarrow",
                        batch_size=None)
    for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for label, count, key in zip(b["label"].to_pylist(), b["item_id_count"].to_pylist(), b["item_id_min"].to_pylist()):
            counts[label] += count
            first[label] = key if label not in first else min(first[label], key)
    used = np.flatnonzero(counts)
    lut = (merge_lut(ray.get(centroids), used, cfg.merge_threshold) if centroids is not None
           else np.zeros(k, np.int64))
    merged_first: dict[int, str] = {}
    for label in used.tolist():
        m = int(lut[label])
        merged_first[m] = first[label] if m not in merged_first else min(merged_first[m], first[label])
    order = sorted(merged_first, key=merged_first.__getitem__)  # numbered by first appearance in key order
    rank = {m: i for i, m in enumerate(order)}
    final = np.array([rank.get(int(lut[label]), -1) for label in range(k)], np.int64)
    sizes = np.bincount(final[used], weights=counts[used], minlength=len(order)).astype(np.int64)
    scale = n / float(np.sqrt(sizes.astype(np.float64)).sum())
    return Clusters(final, sizes, scale)
