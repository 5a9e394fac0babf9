"""Writing the run's outputs: the ledger, the index and dataset.json (logic in ``ledger``).

Small runs build them in the driver (one partition). Larger ones run as Ray tasks: a hash
shuffle by video, then one writer per partition.

Map tasks read groups of one stage's parts (the ledger's columns only) and return one Arrow
table per partition; reduce task p gets table p of every map task (Ray moves them through the
object store, spilling to disk when they outgrow it), computes ``ledger.reduce_partition`` and
writes ``ledger/part-<p>.parquet``. Index tasks need no shuffle. Each task's output file is named
by its partition or group, so a task Ray retries overwrites its own file. The driver receives
counts only (``ledger.Tally``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import ray

from reelflow.curation import output_tables
from reelflow.curation.ledger import (
    FUNNEL_STAGES,
    INDEX_PARTS_PER_TASK,
    MAX_PARTITIONS,
    ROWS_PER_PARTITION,
    Tally,
    dataset_summary,
    funnel_rows,
    index_table,
    map_stage_parts,
    reduce_partition,
)
from reelflow.curation.ray_tables import TableRef
from reelflow.curation.records import INDEX_SCHEMA, LEDGER_SCHEMA
from reelflow.curation.stage_store import StageStore
from reelflow.curation.storage import join


@ray.remote(num_cpus=1)
def _map_task(table: TableRef, stage: str, uris: list[str], n: int):
    out = map_stage_parts(table.store(), stage, uris, n)
    return out[0] if n == 1 else tuple(out)


@ray.remote(num_cpus=1)
def _reduce_task(table: TableRef, p: int, *tables: pa.Table) -> Tally:
    rows, tally = reduce_partition(list(tables))
    store = table.store()
    output_tables.write_part(store.storage, store.output, output_tables.LEDGER, p,
                             pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA))
    return tally


@ray.remote(num_cpus=1)
def _index_task(table: TableRef, i: int, uris: list[str]) -> Tally:
    store = table.store()
    t, tally = index_table(store, uris)
    output_tables.write_part(store.storage, store.output, output_tables.INDEX, i, t)
    return tally


def _groups(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def build(store: StageStore, partitions: int, part_rows: int,
          progress: Callable[[int, int], None] | None = None) -> Tally:
    """Write the ledger (``partitions`` parts) and the index from the workers; return the counts."""
    ref = TableRef(store.output, store.storage.s3)
    parts_per_map = max(1, ROWS_PER_PARTITION // max(1, part_rows))
    maps = []
    for stage in FUNNEL_STAGES:
        for uris in _groups(store.parts(stage), parts_per_map):
            out = _map_task.options(num_returns=partitions).remote(ref, stage, uris, partitions)
            maps.append([out] if partitions == 1 else list(out))
    pending = [_reduce_task.remote(ref, p, *[m[p] for m in maps]) for p in range(partitions)]
    shard_groups = _groups(store.parts("shard"), INDEX_PARTS_PER_TASK)
    pending += [_index_task.remote(ref, i, uris) for i, uris in enumerate(shard_groups)]
    if not shard_groups:  # no clip was kept: the index is one empty part
        output_tables.write_part(store.storage, store.output, output_tables.INDEX, 0, INDEX_SCHEMA.empty_table())
    del maps  # the shuffle's objects are freed as the reduce tasks finish
    tally, total = Tally(), len(pending)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for t in ray.get(done):
            tally.add(t)
        if progress:
            progress(total - len(pending), total)
    return tally


@dataclass
class Outputs:
    summary: dict  # dataset.json
    funnel: list[dict]  # per stage: rows, passed, rejected, failed
    rule_rejects: dict[str, int]  # quality rule -> clips it removed


def n_partitions(store: StageStore, part_rows: int) -> int:
    """Partitions for the ledger's shuffle, from the part count and ``runtime.part_rows`` (an
    estimate: no footer is read), so each reduce holds about ``ROWS_PER_PARTITION`` rows."""
    parts = sum(len(store.parts(s)) for s in FUNNEL_STAGES)
    return max(1, min(MAX_PARTITIONS, math.ceil(parts * part_rows / ROWS_PER_PARTITION)))


def write_outputs(store: StageStore, run_id: str, policy_json: str, *, in_driver: bool = True,
                  partitions: int | None = None, part_rows: int = 64, single_file_max_rows: int = 1_000_000,
                  progress=None) -> Outputs:
    """Write the ledger and the index (parts, plus the single files for small runs) and
    dataset.json at the OUTPUT root. ``in_driver``: small tables, built in this process (one
    partition); else by Ray tasks over ``partitions`` (default: ``n_partitions``)."""
    storage, output = store.storage, store.output
    for name in output_tables.NAMES:
        output_tables.clear(storage, output, name)
    if in_driver:
        tally = _ledger_in_driver(store)
        tally.add(_index_in_driver(store))
    else:
        tally = build(store, partitions or n_partitions(store, part_rows), part_rows, progress)
    for name, schema, rows in ((output_tables.LEDGER, LEDGER_SCHEMA, tally.ledger_rows),
                               (output_tables.INDEX, INDEX_SCHEMA, tally.index_rows)):
        if rows <= single_file_max_rows:
            output_tables.write_single_file(storage, output, name, schema)
    summary = dataset_summary(tally, run_id, policy_json)
    # Last: its presence says the outputs are complete (validate and train look for it).
    storage.write_bytes(join(output, "dataset.json"), json.dumps(summary, indent=2).encode())
    return Outputs(summary, funnel_rows(tally), dict(tally.rule_rejects))


def _ledger_in_driver(store: StageStore) -> Tally:
    tables = [t for st in FUNNEL_STAGES for t in map_stage_parts(store, st, store.parts(st), 1)]
    rows, tally = reduce_partition(tables)
    output_tables.write_part(store.storage, store.output, output_tables.LEDGER, 0,
                             pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA))
    return tally


def _index_in_driver(store: StageStore) -> Tally:
    table, tally = index_table(store, store.parts("shard"))
    output_tables.write_part(store.storage, store.output, output_tables.INDEX, 0, table)
    return tally
