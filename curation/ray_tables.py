"""Stage tables as Ray Datasets: the workers read them, the workers write them.

The driver lists part files and adds up counts; rows never pass through it (ARCHITECTURE
decision 2). A stage's pending inputs are its input table's ``ok`` rows minus those its own table
already answers — an anti-join. Two plans, as a query engine would pick:

- broadcast (the answered ids fit ``runtime.broadcast_join_max_ids``): the ids are read by the
  workers into the object store, and every read task filters its rows against them (each worker
  builds the set once);
- hash join (more ids than that): Ray Data's distributed ``left_anti`` join, which shuffles both
  sides by id and needs no node to hold all the ids.

``PartSink`` writes a stage's output from the workers, one part per bundle of whole input
answers, named from the ids it answers (``stage_store.part_name``): a write task that Ray retries
overwrites its part instead of adding a copy, and an input's rows are never split across parts,
so a crash leaves an input either wholly answered or not at all.
"""

from __future__ import annotations

import io
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data import Dataset, Datasink
from ray.data.block import BlockAccessor

from reelflow.curation.records import OK, STAGE_SCHEMAS
from reelflow.curation.stage_store import StageStore, part_name
from reelflow.curation.storage import S3Config, Storage

# Parts a read task reads: one part (64 rows by default) a task would be all task overhead.
PARTS_PER_READ_TASK = 8
# Column the stage tasks add to say which Ray node did the work; PartSink drops it.
NODE_COLUMN = "_ray_node"
# Read and write tasks are I/O and reserve no CPU: a stage's model actors may hold every CPU of the
# cluster, and a read feeding them or a write draining them must still be scheduled (with a CPU
# each, a caption pool on every CPU waited forever for its writes). Their number at a time is
# bounded instead (``io_concurrency``); the different CPU request also keeps Ray from fusing them
# into the media tasks.
IO_TASK_CPUS = 0
# Except the write tasks, which reserve a hundredth of a CPU where the cluster has more than one:
# Ray Data 2.60 holds a zero-CPU write whose sink bundles rows (``min_rows_per_write``) for ~1 s
# after its input is done (measured: 1.06 s at 0 CPUs, 0.06 s at 0.01, every run), which was the
# floor of every small stage. A pool never holds every CPU of such a cluster (``pipeline._process``
# leaves one), so a write still finds room; a one-CPU cluster keeps 0.
WRITE_TASK_CPUS = 0.01


def write_task_cpus() -> float:
    return WRITE_TASK_CPUS if ray.cluster_resources().get("CPU", 1) > 1 else IO_TASK_CPUS


def io_concurrency() -> int:
    """Read or write tasks of one operator at a time: about one per CPU of the cluster."""
    return max(2, int(ray.cluster_resources().get("CPU", 2)))


@dataclass(frozen=True)
class TableRef:
    """Where a stage table lives; small and picklable, for the workers."""

    output: str
    s3: S3Config

    def store(self) -> StageStore:
        return StageStore(Storage(self.s3), self.output)


@dataclass(frozen=True)
class Written:
    """What a stage's write tasks wrote in this run."""

    inputs: int  # inputs answered
    rows: int
    retryable: int  # rows failed with a transient error (a resume runs them again)
    nodes: list[str]  # Ray nodes that processed them


@dataclass(frozen=True)
class Answered:
    """The input ids a stage's table already answers, held in the object store."""

    blocks: list  # ObjectRefs of Arrow tables with an "id" column (nulls: parts with no row left)
    count: int  # rows over all blocks (an id answered twice counts twice)
    dataset: Dataset  # the same ids as a Dataset, for the hash-join plan


# -- small tables --------------------------------------------------------------------------------
SMALL_MAX_PARTS = 256  # more parts than this is never a small table (no footer is read)


def small_tables(store: StageStore, stages: list[str], max_rows: int) -> bool:
    """Whether ``stages``' tables together hold at most ``max_rows`` rows (``runtime.driver_max_rows``).
    Such tables are counted, anti-joined and gated in the driver: each Ray job costs ~1 s, a few a
    stage, which is all of a small run's time. Beyond it, only the workers read them."""
    parts = [u for s in stages for u in store.parts(s)]
    if len(parts) > SMALL_MAX_PARTS:
        return False
    rows = 0
    for uri in parts:
        rows += pq.ParquetFile(io.BytesIO(store.storage.read_bytes(uri))).metadata.num_rows
        if rows > max_rows:
            return False
    return True


def _ok_rows(store: StageStore, stage: str, answered: "Answered | None") -> pa.Table:
    """The ok rows of a small table that ``answered`` does not hold, in this process."""
    t = store.read(stage)
    t = t.filter(pc.equal(t["status"], OK))
    if answered is not None:
        done = _answered_set(answered.blocks)
        t = t.filter(pa.array([i not in done for i in t["item_id"].to_pylist()], pa.bool_()))
    return t


# -- reading -----------------------------------------------------------------------------------
def _parts_dataset(store: StageStore, stage: str) -> Dataset | None:
    parts = store.parts(stage)
    if not parts:
        return None
    return ray.data.from_items([{"uri": u} for u in parts],
                               override_num_blocks=math.ceil(len(parts) / PARTS_PER_READ_TASK))


def _read_parts(batch: pa.Table, table: TableRef, stage: str, columns: list[str] | None, ok_only: bool,
                exclude: list | None, id_column: str) -> pa.Table:
    store = table.store()
    parts = [store.read_part(stage, uri, columns) for uri in batch["uri"].to_pylist()]
    out = pa.concat_tables(parts, promote_options="permissive") if parts else STAGE_SCHEMAS[stage].empty_table()
    if ok_only:
        out = out.filter(pc.equal(out["status"], OK))
    if exclude is not None:
        answered = _answered_set(exclude)
        keep = [i not in answered for i in out[id_column].to_pylist()]
        out = out.filter(pa.array(keep, pa.bool_()))
    return out


_answered_sets: dict[str, frozenset] = {}


def _answered_set(refs: list) -> frozenset:
    """The broadcast ids as a set, built once per worker process and answered-set."""
    key = ",".join(r.hex() for r in refs)
    if key not in _answered_sets:
        _answered_sets.clear()  # one stage at a time: drop the last stage's set
        ids: set[str] = set()
        for t in ray.get(refs):
            ids.update(x for x in t["id"].to_pylist() if x is not None)
        _answered_sets[key] = frozenset(ids)
    return _answered_sets[key]


def read_table(store: StageStore, stage: str, columns: list[str] | None = None,
               ok_only: bool = False) -> Dataset | None:
    """A stage table as a Dataset read by the workers (None when it has no parts)."""
    ds = _parts_dataset(store, stage)
    if ds is None:
        return None
    need = columns if columns is None or not ok_only or "status" in columns else [*columns, "status"]
    return ds.map_batches(_read_parts, fn_kwargs=dict(table=TableRef(store.output, store.storage.s3), stage=stage,
                                                      columns=need, ok_only=ok_only, exclude=None, id_column="item_id"),
                          batch_size=PARTS_PER_READ_TASK, batch_format="pyarrow", num_cpus=IO_TASK_CPUS,
                          concurrency=io_concurrency())


def answered_ids(store: StageStore, stage: str, id_column: str, small: bool = False,
                 drop_retryable: bool = True) -> tuple[Answered | None, int]:
    """The ids of the inputs ``stage``'s table answers (its ``id_column``), materialised in the
    object store (not in the driver), and, with ``drop_retryable``, an earlier run's retryable
    failures dropped first (so this run does them again; ``StageStore.drop_retryable_part``).
    Returns (None when nothing is answered, rows dropped). One pass over the table, by the
    workers (``small``: in this process)."""
    if small:
        dropped = store.drop_retryable(stage) if drop_retryable else 0
        t = store.read(stage)
        ids = pc.unique(pc.drop_null(t[id_column])).cast(pa.string()) if t.num_rows else pa.array([], pa.string())
        if not len(ids):
            return None, dropped
        table = pa.table({"id": ids})
        return Answered(blocks=[ray.put(table)], count=len(ids), dataset=ray.data.from_arrow(table)), dropped
    ds = _parts_dataset(store, stage)
    if ds is None:
        return None, 0
    ds = ds.map_batches(_scan_answers, fn_kwargs={"table": TableRef(store.output, store.storage.s3), "stage": stage,
                                                  "id_column": id_column, "drop_retryable": drop_retryable},
                        batch_size=PARTS_PER_READ_TASK, batch_format="pyarrow", num_cpus=IO_TASK_CPUS,
                          concurrency=io_concurrency())
    mat = ds.materialize()
    dropped = count = 0
    for block in mat.iter_batches(batch_size=None, batch_format="pyarrow"):
        dropped += pc.sum(block["dropped"]).as_py() or 0
        count += block.num_rows - block["id"].null_count
    if not count:
        return None, dropped
    ids = mat.map_batches(_non_null_ids, batch_format="pyarrow", num_cpus=IO_TASK_CPUS,
                          concurrency=io_concurrency())
    return Answered(blocks=list(mat.to_arrow_refs()), count=count, dataset=ids), dropped


def _non_null_ids(batch: pa.Table) -> pa.Table:
    return pa.table({"id": pc.drop_null(batch["id"])})


def _scan_answers(batch: pa.Table, table: TableRef, stage: str, id_column: str, drop_retryable: bool) -> pa.Table:
    store = table.store()
    ids, dropped = [], []
    for uri in batch["uri"].to_pylist():
        n = store.drop_retryable_part(stage, uri) if drop_retryable else 0
        # One row per input: a 1:N stage's rows of one input sit in one part (PartSink never splits).
        got = (pc.unique(pc.drop_null(store.read_part(stage, uri, [id_column])[id_column])).to_pylist()
               if store.storage.exists(uri) else [])
        ids += got or [None]  # a part whose every row was dropped still reports its count
        dropped += [n] + [0] * (len(got or [None]) - 1)
    return pa.table({"id": pa.array(ids, pa.string()), "dropped": pa.array(dropped, pa.int64())})


def pending_inputs(store: StageStore, input_stage: str, answered: Answered | None, broadcast_max: int,
                   columns: list[str] | None = None, small: bool = False) -> Dataset | None:
    """The ``ok`` rows of ``input_stage`` that ``answered`` does not hold (see the module doc for
    the two plans; ``small``: filtered in this process). ``columns`` projects the read."""
    if small:
        return ray.data.from_arrow(_ok_rows(store, input_stage, answered))
    ds = _parts_dataset(store, input_stage)
    if ds is None:
        return None
    need = None if columns is None else sorted({*columns, "status", "item_id"})
    broadcast = answered is not None and answered.count <= broadcast_max
    kwargs = dict(table=TableRef(store.output, store.storage.s3), stage=input_stage, columns=need, ok_only=True,
                  exclude=answered.blocks if broadcast else None, id_column="item_id")
    ds = ds.map_batches(_read_parts, fn_kwargs=kwargs, batch_size=PARTS_PER_READ_TASK, batch_format="pyarrow",
                        num_cpus=IO_TASK_CPUS, concurrency=io_concurrency())
    if answered is not None and not broadcast:
        ds = ds.join(answered.dataset, "left_anti", num_partitions=_join_partitions(answered.count),
                     on=("item_id",), right_on=("id",))
    return ds


def _join_partitions(n: int) -> int:
    # ~1M ids a partition: each reduce task holds one partition of both sides.
    return max(2, math.ceil(n / 1_000_000))


def count_pending(store: StageStore, input_stage: str, answered: Answered | None, broadcast_max: int,
                  small: bool = False) -> tuple[int, int]:
    """(ok inputs, pending inputs), from a projected read of two columns: one pass unless the
    hash-join plan needs a second (``small``: counted in this process)."""
    if small:
        return _ok_rows(store, input_stage, None).num_rows, _ok_rows(store, input_stage, answered).num_rows
    ds = _parts_dataset(store, input_stage)
    if ds is None:
        return 0, 0
    broadcast = answered is not None and answered.count <= broadcast_max
    ds = ds.map_batches(_count_parts, fn_kwargs=dict(table=TableRef(store.output, store.storage.s3), stage=input_stage,
                                                     exclude=answered.blocks if broadcast else None),
                        batch_size=PARTS_PER_READ_TASK, batch_format="pyarrow", num_cpus=IO_TASK_CPUS,
                          concurrency=io_concurrency())
    n_ok = n_pending = 0
    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        n_ok += pc.sum(block["ok"]).as_py() or 0
        n_pending += pc.sum(block["pending"]).as_py() or 0
    if answered is not None and not broadcast:
        n_pending = pending_inputs(store, input_stage, answered, broadcast_max, columns=["item_id"]).count()
    return n_ok, n_pending


def _count_parts(batch: pa.Table, table: TableRef, stage: str, exclude: list | None) -> pa.Table:
    ok = _read_parts(batch, table, stage, ["item_id", "status"], ok_only=True, exclude=None, id_column="item_id")
    pending = ok.num_rows
    if exclude is not None:
        answered = _answered_set(exclude)
        pending = sum(i not in answered for i in ok["item_id"].to_pylist())
    return pa.table({"ok": [ok.num_rows], "pending": [pending]})


# -- writing -----------------------------------------------------------------------------------
@ray.remote(num_cpus=0)
class _Tally:
    """Inputs answered so far per write (keyed), reported by the write tasks for the driver's
    progress bar. One actor per driver and Ray session (``tally_actor``): an actor start cost ~0.4 s,
    which was most of a small stage's time when each stage started its own."""

    def __init__(self) -> None:
        self.n: dict[str, int] = {}

    def add(self, key: str, n: int) -> None:
        self.n[key] = self.n.get(key, 0) + n

    def get(self, key: str) -> int:
        return self.n.get(key, 0)

    def forget(self, key: str) -> None:
        self.n.pop(key, None)


_tally_actor: tuple[str, object] | None = None  # (this driver's Ray worker id, handle)


def tally_actor():
    global _tally_actor
    driver = ray.get_runtime_context().get_worker_id()  # new on every ray.init
    if _tally_actor is None or _tally_actor[0] != driver:
        _tally_actor = (driver, _Tally.remote())
    return _tally_actor[1]


@dataclass(frozen=True)
class TallyRef:
    """Where a write's tasks report how many inputs they answered."""

    actor: object
    key: str

    def add(self, n: int) -> None:
        self.actor.add.remote(self.key, n)


class PartSink(Datasink):
    """Writes a stage's output rows as parts, from the write tasks (see the module doc)."""

    def __init__(self, table: TableRef, stage: str, id_column: str, part_rows: int, tally=None):
        self.table, self.stage, self.id_column, self.part_rows, self.tally = table, stage, id_column, part_rows, tally
        self.results: list[dict] = []

    @property
    def min_rows_per_write(self) -> int:
        return self.part_rows

    def write(self, blocks, ctx) -> dict:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return {"rows": 0, "inputs": 0, "retryable": 0, "nodes": []}
        out = pa.concat_tables(tables, promote_options="permissive")
        nodes = []
        if NODE_COLUMN in out.column_names:
            nodes = pc.unique(out[NODE_COLUMN]).to_pylist()
            out = out.drop_columns([NODE_COLUMN])
        out = out.cast(STAGE_SCHEMAS[self.stage])
        ids = pc.unique(pc.drop_null(out[self.id_column])).to_pylist()
        self.table.store().write_part(self.stage, out, name=part_name(ids))
        if self.tally is not None:
            self.tally.add(len(ids))
        retryable = pc.sum(pc.and_(pc.equal(out["status"], "failed"), pc.fill_null(out["retryable"], False))).as_py()
        return {"rows": out.num_rows, "inputs": len(ids), "retryable": retryable or 0, "nodes": nodes}

    def on_write_complete(self, write_result) -> None:
        self.results = [r for r in write_result.write_returns if r]

    def get_name(self) -> str:
        return f"Write({self.stage})"


def write_parts(ds: Dataset, store: StageStore, stage: str, id_column: str, part_rows: int,
                progress: Callable[[int], None] | None = None) -> Written:
    """Run ``ds`` to the end, its rows written as parts of ``stage`` by the workers.
    ``progress(n)`` is called with the inputs answered so far as write tasks finish."""
    tally = TallyRef(tally_actor(), uuid.uuid4().hex) if progress else None
    sink = PartSink(TableRef(store.output, store.storage.s3), stage, id_column, part_rows, tally)
    write_args = {"ray_remote_args": {"num_cpus": write_task_cpus()}, "concurrency": io_concurrency()}
    if progress is None:
        ds.write_datasink(sink, **write_args)
        return _written(sink.results)
    error: list[BaseException] = []

    def run() -> None:
        try:
            ds.write_datasink(sink, **write_args)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread below
            error.append(e)

    writer = threading.Thread(target=run, name=f"write-{stage}", daemon=True)
    writer.start()
    try:
        # Checked often (a small stage is over in a fraction of a second), reported twice a second.
        last = 0.0
        while writer.is_alive():
            writer.join(timeout=0.02)
            if time.monotonic() - last >= 0.5 or not writer.is_alive():
                progress(ray.get(tally.actor.get.remote(tally.key)))
                last = time.monotonic()
    finally:
        tally.actor.forget.remote(tally.key)
    if error:
        raise error[0]
    return _written(sink.results)


def _written(results: list[dict]) -> Written:
    return Written(inputs=sum(r["inputs"] for r in results), rows=sum(r["rows"] for r in results),
                   retryable=sum(r["retryable"] for r in results), nodes=sorted({n for r in results for n in r["nodes"]}))

