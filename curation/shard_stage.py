"""The shard stage where the rows lie: a plan from three columns, then one writer per shard.

Shard membership is ``shard.plan_shards``'s rule (per bucket, by key, cut by sample count and
bytes), which needs every accepted clip's bucket, key and size in key order, and nothing else.
Beyond ``runtime.driver_max_rows`` the stage:

1. plans: the workers project those three columns and sort them (Ray Data's distributed sort);
   one task reads the sorted blocks in order (``preserve_order``), applying the cut rule as it
   goes, and returns one boundary per shard (the bucket, its first key, its name) -- ~10k entries
   for 10M clips, never the rows, which do not pass through the driver;
2. writes: map tasks read the full rows, give each its shard by binary search of those
   boundaries and split them by shard range; one writer task per range (~``ROWS_PER_WRITER``
   rows, whole shards in plan order) writes its tars and one part of the shard table, named
   from its ids, so a retried task overwrites its own files. (Ray Data's ``groupby`` was tried
   first: its sort shuffle gave one writer all the shards at 1M clips, one core busy.)

The tars and the table are the same as the in-driver path's (``pipeline.run_shard_stage``, small
tables), byte for byte: a test runs both. The stage is all-or-nothing, as before: it skips when
its ``_FINISHED.json`` marker matches both tables, and otherwise clears and rewrites (the same
bytes again).
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from reelflow.curation import ray_tables
from reelflow.curation import shard as shard_mod
from reelflow.curation.buckets import bucket_name
from reelflow.curation.records import OK, STAGE_SCHEMAS, to_table
from reelflow.curation.stage_store import StageStore, part_name
from reelflow.curation.stage_unit import StageContext
from reelflow.curation.storage import join

SHARD_INPUT = "balance"  # the last stage before sharding
PLAN_COLUMNS = ["item_id", "width", "height", "duration_s", "clip_bytes"]
ROWS_PER_WRITER = 50_000  # rows a writer task holds (with embeddings ~10-40 KiB each)


@dataclass(frozen=True)
class ShardBounds:
    """Per bucket, the first key of each of its shards (sorted) and the shards' names."""

    firsts: dict[str, list[str]]
    names: dict[str, list[str]]

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.names.values())

    def shard_of(self, bucket: str, key: str) -> str:
        return self.names[bucket][bisect.bisect_right(self.firsts[bucket], key) - 1]


def _plan_columns(batch: pa.Table, buckets) -> pa.Table:
    names = [bucket_name(int(w), int(h), float(d), buckets)[2] for w, h, d in
             zip(batch["width"].to_pylist(), batch["height"].to_pylist(), batch["duration_s"].to_pylist())]
    size = np.nan_to_num(batch["clip_bytes"].to_numpy(zero_copy_only=False).astype(float), nan=0.0).astype(np.int64)
    return pa.table({"bucket": pa.array(names, pa.string()), "item_id": batch["item_id"], "nbytes": size})


def plan_bounds(store: StageStore, ctx: StageContext) -> tuple[ShardBounds, int]:
    """The shard boundaries of the accepted clips (``shard.plan_shards``'s rule, streamed), and
    how many clips they cover."""
    cfg = ctx.policy.output
    ds = ray_tables.read_table(store, SHARD_INPUT, columns=PLAN_COLUMNS, ok_only=True)
    if ds is None:
        return ShardBounds({}, {}), 0
    ds = ds.map_batches(_plan_columns, fn_kwargs={"buckets": ctx.policy.buckets}, batch_format="pyarrow",
                        batch_size=None).sort(["bucket", "item_id"])
    data_ctx = ray.data.DataContext.get_current()
    keep_order = data_ctx.execution_options.preserve_order
    data_ctx.execution_options.preserve_order = True  # the cut rule reads the keys in order
    try:
        blocks = ds.to_arrow_refs()
    finally:
        data_ctx.execution_options.preserve_order = keep_order
    # One task applies the cut rule over the sorted blocks. The driver streaming them itself held
    # the pages of every block it read: +54 MiB of RSS from 100k to 1M clips, ~0.5 GiB at 10M.
    return ray.get(_plan_task.remote(blocks, cfg.shard_max_samples, cfg.shard_max_bytes))


@ray.remote(num_cpus=1)
def _plan_task(blocks: list, max_samples: int, max_bytes: int) -> tuple[ShardBounds, int]:
    """``plan_bounds``' scan: the sorted blocks (references, in order), one at a time."""
    firsts: dict[str, list[str]] = {}
    names: dict[str, list[str]] = {}
    bucket, count, size, clips = None, 0, 0, 0
    for ref in blocks:
        batch = ray.get(ref)
        for b, key, nbytes in zip(batch["bucket"].to_pylist(), batch["item_id"].to_pylist(),
                                  batch["nbytes"].to_pylist()):
            # plan_shards: a bucket's first clip opens its first shard; a clip that would take
            # the open shard past a cap opens the next one.
            if b != bucket:
                bucket, firsts[b], names[b] = b, [], []
            if not names[b] or count >= max_samples or size + nbytes > max_bytes:
                firsts[b].append(key)
                names[b].append(f"shards/{b}/shard-{len(names[b]):06d}.tar")
                count, size = 0, 0
            count += 1
            size += nbytes
            clips += 1
        del batch
    return ShardBounds(firsts, names), clips


def _map_task_rows(store: StageStore, uris: list[str], bounds: ShardBounds, order: dict[str, int],
                   n_parts: int, buckets) -> list[pa.Table]:
    """The ok rows of balance parts ``uris``, each given its shard, split into ``n_parts`` tables
    by shard range (shard ordinal * n_parts // shards: whole shards, in order, per writer)."""
    parts = [store.read_part(SHARD_INPUT, u) for u in uris]
    t = pa.concat_tables(parts) if parts else STAGE_SCHEMAS[SHARD_INPUT].empty_table()
    t = t.filter(pc.equal(t["status"], OK))
    b = [bucket_name(int(w), int(h), float(d), buckets)[2] for w, h, d in
         zip(t["width"].to_pylist(), t["height"].to_pylist(), t["duration_s"].to_pylist())]
    shards = [bounds.shard_of(bk, k) for bk, k in zip(b, t["item_id"].to_pylist())]
    t = t.append_column("shard", pa.array(shards, pa.string()))
    dest = np.array([order[s] * n_parts // len(order) for s in shards], np.int64)
    idx = np.argsort(dest, kind="stable")
    cuts = np.searchsorted(dest[idx], np.arange(n_parts + 1))
    t = t.take(pa.array(idx))
    return [t.slice(cuts[i], cuts[i + 1] - cuts[i]) for i in range(n_parts)]


@ray.remote(num_cpus=1)
def _map_task(ref: ray_tables.TableRef, uris: list[str], bounds: ShardBounds, order: dict[str, int], n_parts: int,
              buckets):
    out = _map_task_rows(ref.store(), uris, bounds, order, n_parts, buckets)
    return out[0] if n_parts == 1 else tuple(out)


def write_shards(rows: pa.Table, ctx: StageContext) -> pa.Table:
    """Each shard of ``rows`` (rows carry their ``shard``): its tar, and its rows of the shard
    table, as the in-driver path writes them."""
    by_shard: dict[str, list[dict]] = {}
    for r in rows.to_pylist():
        by_shard.setdefault(r["shard"], []).append(r)
    out: list[dict] = []
    for name in sorted(by_shard):
        members = [shard_mod.with_buckets(r, ctx.policy) for r in sorted(by_shard[name], key=lambda r: r["item_id"])]
        out += shard_mod.write_shard(ctx.storage, ctx.output, name, members)
    return to_table([{**r, "stage": "shard", "status": OK} for r in out], STAGE_SCHEMAS["shard"])


@ray.remote(num_cpus=1)
def _write_task(ctx: StageContext, *tables: pa.Table) -> int:
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return 0
    out = write_shards(pa.concat_tables(tables), ctx)
    store = StageStore(ctx.storage, ctx.output)
    store.write_part("shard", out, name=part_name(out["item_id"].to_pylist()))
    return out.num_rows


def _groups(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def run_distributed(ctx: StageContext, store: StageStore, progress: Callable[[int, int], None] | None,
                    t0: float) -> tuple[int, int, float]:
    """(accepted clips, of which skipped as already sharded, seconds); see the module doc."""
    rt = ctx.policy.runtime
    n_ok, _ = ray_tables.count_pending(store, SHARD_INPUT, None, rt.broadcast_join_max_ids)
    if store.finished("shard", SHARD_INPUT) == n_ok:
        return n_ok, n_ok, time.perf_counter() - t0
    store.clear("shard")
    ctx.storage.delete_prefix(join(ctx.output, "shards"))
    bounds, clips = plan_bounds(store, ctx)
    if progress:
        progress(0, clips)
    if clips:
        # Range partitions of whole shards, in plan order: ~ROWS_PER_WRITER rows a writer task,
        # and at least one per CPU so every core writes.
        order = {name: i for i, name in enumerate(n for b in sorted(bounds.names) for n in bounds.names[b])}
        cpus = int(ray.cluster_resources().get("CPU", 1))
        n_parts = max(1, min(len(order), max(cpus, math.ceil(clips / ROWS_PER_WRITER))))
        ref = ray_tables.TableRef(store.output, store.storage.s3)
        per_map = max(1, ROWS_PER_WRITER // max(1, rt.part_rows))
        maps = []
        for uris in _groups(store.parts(SHARD_INPUT), per_map):
            out = _map_task.options(num_returns=n_parts).remote(ref, uris, bounds, order, n_parts, ctx.policy.buckets)
            maps.append([out] if n_parts == 1 else list(out))
        pending = [_write_task.remote(ctx, *[m[p] for m in maps]) for p in range(n_parts)]
        del maps
        written = 0
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            written += sum(ray.get(done))
            if progress:
                progress(written, clips)
        if written != clips:
            raise RuntimeError(f"shard: wrote {written} samples for {clips} accepted clips; a shard task failed")
    store.mark_finished("shard", SHARD_INPUT, n_ok)
    return n_ok, 0, time.perf_counter() - t0
