"""The Ray adapter: runs each stage of ``stage_list.PIPELINE`` on Ray and persists its table.

How a stage runs is decided here, from what it declares (``stage_unit.Stage``): its ``shape``
(source, item or table) and its ``resources`` (an actor pool where it loads a model or takes a
GPU, plain tasks otherwise). Per-item stages run as Ray Data operators whose write tasks commit
the output parts, so a crash loses at most one part's worth of work and a rerun does only what is
missing. Rows whose worker died (a crash Ray could not retry away) are written as ``failed``
rows: every input still reaches the table, and the run goes on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import ray

from reelflow.curation import balance_stage, dedup_stage, ingest_stage, ray_tables, shard_stage, sources
from reelflow.curation import shard as shard_mod
from reelflow.curation.records import CLIP, FAILED, OK, SCORE_ANALYSIS_SCHEMA, STAGE_SCHEMAS, clip_key, to_table
from reelflow.curation.stage_list import stage_class
from reelflow.curation.stage_store import StageStore
from reelflow.curation.stage_unit import Stage, StageContext
from reelflow.curation.stages import IngestStage, ItemStage
from reelflow.curation.storage import join
from reelflow.curation.table_stages import ShardStage, TableStage

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)


@dataclass
class StageRun:
    stage: str
    inputs: int  # ok rows of the input stage
    skipped: int  # already done by an earlier run (resume)
    processed: int  # inputs processed in this run
    crashed: int  # inputs whose worker died; written as failed rows
    seconds: float = 0.0  # wall time of this stage in this run
    nodes: int = 0  # Ray nodes whose workers processed this stage's inputs in this run
    note: str = ""  # how it ran, for the run's log (e.g. ingest: "judged by the workers")


def package_dir() -> str:
    """A directory named ``reelflow`` holding this installation's packages, for Ray's
    ``py_modules`` (it ships a directory under its own name). An installed wheel is one already;
    a checkout (editable install: the packages sit at the repo root beside tests and data) gets a
    copy of just the packages, made once per process."""
    global _package_dir
    here = Path(__file__).resolve().parents[1]
    if here.name == "reelflow":
        return str(here)
    if _package_dir is None:
        dest = Path(tempfile.mkdtemp(prefix="reelflow-py-modules-")) / "reelflow"
        for name in PACKAGES:
            shutil.copytree(here / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        _package_dir = str(dest)
    return _package_dir


PACKAGES = ("curation", "flows", "models", "training")  # installed as reelflow.<name> (pyproject.toml)
_package_dir: str | None = None


def ensure_ray(address: str | None = None) -> None:
    """Connect to ``address`` / ``RAY_ADDRESS`` when given, else start (or reuse) a local Ray."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        # Ship our packages to the cluster's workers so they run the same code as the driver
        # (curation stages; the training loop and the models for Ray Train workers).
        kwargs["runtime_env"] = {"py_modules": [package_dir()]}
    ray.init(address=address, **kwargs)
    _quiet_ray_data()


def _import_stage_modules() -> int:
    # What every stage task unpickles first (and pyarrow, numpy with it); ~1 s in a fresh worker.
    import reelflow.curation.pipeline  # noqa: F401
    import reelflow.curation.stages  # noqa: F401

    return os.getpid()


def warm_workers() -> None:
    """Have Ray's idle workers import the stage modules now, and start the progress tally actor,
    while the run's other engines still start: the first stage otherwise paid both (~2 s of its
    3 s for one file). Best effort: nothing waits for it."""
    ray_tables.tally_actor()
    task = ray.remote(num_cpus=1)(_import_stage_modules)  # a CPU each: one task per idle worker
    for _ in range(max(1, min(16, int(ray.cluster_resources().get("CPU", 1))))):
        task.remote()


def _quiet_ray_data() -> None:
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    # The I/O operators cap their tasks at about one per CPU (ray_tables.io_concurrency); Ray warns
    # each time a small table gives them fewer inputs than that, which is expected and harmless.
    warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks", category=UserWarning)
    ctx = ray.data.DataContext.get_current()
    # Our own progress bar reports per stage; Ray's would interleave with it.
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    # A block whose task crashed beyond its retries must not abort the stage: its rows are
    # written as failed afterwards (see run_media_stage).
    ctx.max_errored_blocks = -1


def _bounded_retries(retries: int, actor: bool = False) -> dict:
    """Ray Data retries a task whose worker died forever by default (``max_retries=-1``), which
    would hang a run on one file that crashes its decoder. Ray 2.60 has no named parameter for
    this; ``ray_remote_args_fn`` is deprecated for Ray 2.64 (we pin 2.60), so its warning is
    silenced here, in the one place that uses it."""
    args = {"max_restarts": retries, "max_task_retries": retries} if actor else {"max_retries": retries}
    return {"ray_remote_args_fn": lambda: args}


def _map_batches(ds, fn, **kwargs):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args_fn.*deprecated")
        return ds.map_batches(fn, **kwargs)


def _run_batch(batch: pa.Table, stage: ItemStage) -> pa.Table:
    """A task's batch: set the stage up, answer each row, tear it down (a task's stage is its own
    copy; an actor pool's stage stays set up across batches, see ``_StageActor``)."""
    stage.setup()
    try:
        return _answer(batch, stage)
    finally:
        stage.teardown()


def _answer(batch: pa.Table, stage: ItemStage) -> pa.Table:
    out: list[dict] = []
    for row in batch.to_pylist():
        out.extend(stage.run_row(row))
    table = to_table(out, STAGE_SCHEMAS[stage.name])
    # Which node did the work (PartSink counts them and drops the column): a run on a cluster
    # reports how many nodes each stage used.
    return table.append_column(ray_tables.NODE_COLUMN, pa.array([ray.get_runtime_context().get_node_id()] * table.num_rows))


class _StageActor:
    """Ray actor wrapper: ``setup`` (model loading) runs once per actor, not per batch, and
    ``teardown`` when the pool ends: Ray Data 2.60 shuts a finished pool down gracefully
    (``MapWorker.__ray_shutdown__`` drops the UDF, and its ``__del__`` runs; tested in
    tests/test_stage_unit.py). An actor that is killed or crashes gets no teardown, so what a stage
    holds must also be reclaimed by its process's exit (models in memory, GPU contexts)."""

    def __init__(self, stage: ItemStage):
        self.stage = stage
        self.stage.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _answer(batch, self.stage)

    def __del__(self) -> None:
        self.stage.teardown()


def _run_analyze_batch(batch: pa.Table, stage: ItemStage) -> pa.Table:
    return to_table([stage.run_analyze(row) for row in batch.to_pylist()], SCORE_ANALYSIS_SCHEMA)


def run_media_stage(
    stage: ItemStage, store: StageStore, progress: Progress | None = None, actors: int | None = None
) -> StageRun:
    """Run one stage over its pending inputs with Ray Data: the workers read the input table,
    skip what this stage's table already answers, process, and write the output parts. The
    driver handles counts only."""
    t0 = time.perf_counter()
    ctx = stage.ctx
    finished = store.finished(stage.name, stage.input_stage)
    if finished is not None:  # nothing changed since this stage last answered all its inputs
        if progress:
            progress(0, 0)
        return StageRun(stage.name, finished, finished, 0, 0, time.perf_counter() - t0)
    ensure_ray()
    _quiet_ray_data()
    runtime = ctx.policy.runtime
    small = ray_tables.small_tables(store, [stage.input_stage, stage.name], runtime.driver_max_rows)
    answered, retried = ray_tables.answered_ids(store, stage.name, stage.input_id_column, small)
    if retried:
        log.info("%s: retrying %d item(s) that failed with a transient error", stage.name, retried)
    n_ok, n_pending = ray_tables.count_pending(store, stage.input_stage, answered, runtime.broadcast_join_max_ids, small)
    if progress:
        progress(0, n_pending)
    nodes: set[str] = set()
    crashed = retryable = 0
    if n_pending:
        bs = stage.rows_per_task or runtime.batch_size
        pending = ray_tables.pending_inputs(store, stage.input_stage, answered, runtime.broadcast_join_max_ids,
                                            small=small)
        written = _process(stage, store, pending, bs, n_pending, progress, actors)
        nodes.update(written.nodes)
        retryable = written.retryable
        if written.inputs < n_pending:
            # Some inputs are unanswered: their task's worker died beyond Ray's retries. They are
            # few: bring them to the driver.
            lost = _unanswered(stage, store)
            if lost.num_rows > 1:
                # A task of many rows died with its worker: run those rows again one a task, so only
                # the row that kills its worker is recorded as crashed, not the rows that shared its task.
                log.warning("%s: a task of %d rows lost its worker; retrying its rows one a task", stage.name, len(lost))
                again = _process(stage, store, ray.data.from_arrow([lost.slice(i, 1) for i in range(lost.num_rows)]),
                                 1, n_pending, progress, actors, base=written.inputs)
                nodes.update(again.nodes)
                retryable += again.retryable
                lost = _unanswered(stage, store)
            if lost.num_rows:
                log.warning("%s: %d item(s) lost their worker; recording them as failed", stage.name, lost.num_rows)
                store.write_part(stage.name, [_crashed_row(stage, r) for r in lost.to_pylist()])
            crashed = lost.num_rows
    if not (crashed or retryable):
        # Every input answered for good: a rerun skips this stage without reading a table.
        store.mark_finished(stage.name, stage.input_stage, n_ok)
    if progress:
        progress(n_pending, n_pending)
    return StageRun(stage.name, n_ok, n_ok - n_pending, n_pending, crashed, time.perf_counter() - t0, len(nodes))


def _unanswered(stage: ItemStage, store: StageStore) -> pa.Table:
    """The ok inputs of ``stage`` its table does not answer, in this process."""
    runtime = stage.ctx.policy.runtime
    small = ray_tables.small_tables(store, [stage.input_stage, stage.name], runtime.driver_max_rows)
    # This run's retryable failures are answers (a later run retries them): keep them.
    answered, _ = ray_tables.answered_ids(store, stage.name, stage.input_id_column, small, drop_retryable=False)
    ds = ray_tables.pending_inputs(store, stage.input_stage, answered, runtime.broadcast_join_max_ids, small=small)
    tables = [ray.get(ref) for ref in ds.to_arrow_refs()]
    return pa.concat_tables(tables) if tables else STAGE_SCHEMAS[stage.input_stage].empty_table()


def _process(stage: ItemStage, store: StageStore, ds: ray.data.Dataset, bs: int, total: int,
             progress: Progress | None, actors: int | None, base: int = 0) -> ray_tables.Written:
    """Run ``stage`` over the rows of ``ds`` (``bs`` a Ray task) and have the workers write its
    parts."""
    ctx = stage.ctx
    cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
    # Exactly ``bs`` rows a task: a read task's block holds many, and a worker that dies takes its
    # whole task's rows with it (and one slow video would hold the others back). Ray Data splits
    # blocks in tasks of one CPU each, so a stage's actors leave one CPU free for them (below), or
    # the pool would wait forever for its input. On a one-CPU cluster nothing is split: its one
    # actor or task works through the rows in turn either way.
    if cluster_cpus > 1:
        ds = ds.repartition(target_num_rows_per_block=bs)
    res = stage.resources()
    common = dict(batch_size=bs, batch_format="pyarrow", zero_copy_batch=True, num_cpus=res.cpus)
    if res.gpus:
        common["num_gpus"] = res.gpus
    retries = ctx.policy.runtime.task_retries
    cpus = int(ray.available_resources().get("CPU", 1))
    if stage.has_cpu_operator and res.actor_pool:
        # The fused CPU operator (decode + CPU scorers) as plain tasks, feeding the model actors.
        cpu_only = {k: v for k, v in common.items() if k != "num_gpus"}
        ds = _map_batches(ds, _run_analyze_batch, fn_kwargs={"stage": stage}, **_bounded_retries(retries), **cpu_only)
        # Leave CPUs for the analyze tasks unless the models sit on GPUs.
        cpus = cpus if res.gpus else max(1, cpus // 2)
    if res.actor_pool:
        n = actors or res.actors or max(1, min(math.ceil(total / bs), cpus))
        n = max(1, min(n, cluster_cpus - 1))  # a CPU left for the tasks that split the input
        ds = _map_batches(ds, _StageActor, fn_constructor_kwargs={"stage": stage},
                          compute=ray.data.ActorPoolStrategy(size=n), **_bounded_retries(retries, actor=True),
                          **common)
    else:
        ds = _map_batches(ds, _run_batch, fn_kwargs={"stage": stage}, **_bounded_retries(retries), **common)
    report = (lambda n: progress(base + n, total)) if progress else None
    return ray_tables.write_parts(ds, store, stage.name, stage.input_id_column, ctx.policy.runtime.part_rows, report)


def _crashed_row(stage: ItemStage, row: dict) -> dict:
    # A dead worker (OOM kill, lost node) says nothing about the item: a resume retries it.
    out = {**row, "stage": stage.name, "status": FAILED, "retryable": True,
           "reason": f"{stage.name}: the worker processing this item crashed (after Ray's retries); a resume retries it"}
    if stage.input_id_column == "parent_id":
        # A 1:N stage (video -> clips) records the loss as one failed clip of that video.
        out.update(kind=CLIP, parent_id=row["item_id"], item_id=clip_key(row["item_id"], 0, 99))
    return out


def run_table_stage(stage: TableStage, store: StageStore, progress: Progress | None = None) -> StageRun:
    """Run a whole-table stage (dedup, balance) over every clip that passed its input stage.

    All-or-nothing like the shard stage: its decisions depend on the whole set, so a table that
    does not cover exactly the current inputs is cleared and recomputed (deterministically).
    Beyond ``runtime.driver_max_rows`` both run on the workers (``dedup_stage``, ``balance_stage``)."""
    t0 = time.perf_counter()
    distributed = {"balance": balance_stage.run_distributed, "dedup": dedup_stage.run_distributed}
    if stage.name in distributed and not ray_tables.small_tables(store, [stage.input_stage, stage.name],
                                                                 stage.policy.runtime.driver_max_rows):
        n, skipped = distributed[stage.name](stage.policy, store, progress)
        return StageRun(stage.name, n, skipped, n - skipped, 0, time.perf_counter() - t0)
    # Sorted by key: part files come back in any order, and k-means and tie-breaks must not care.
    inputs = sorted((r for r in store.read(stage.input_stage).to_pylist() if r["status"] == OK),
                    key=lambda r: r["item_id"])
    ids = {r["item_id"] for r in inputs}
    done = store.read(stage.name)
    if done.num_rows and set(done.column("item_id").to_pylist()) == ids:
        return StageRun(stage.name, len(inputs), len(inputs), 0, 0)
    store.clear(stage.name)
    if progress:
        progress(0, len(inputs))
    if inputs:
        store.write_part(stage.name, stage.run(inputs))
    if progress:
        progress(len(inputs), len(inputs))
    return StageRun(stage.name, len(inputs), 0, len(inputs), 0, time.perf_counter() - t0)


def run_ingest_stage(stage: IngestStage, store: StageStore, progress: Progress | None = None) -> StageRun:
    """List the run's source once; a resume reuses the persisted input table as it is. A manifest
    of more than ``runtime.driver_max_rows`` rows, or a directory or prefix of more files, is
    listed and judged by the workers (``ingest_stage``)."""
    t0 = time.perf_counter()
    ctx = stage.ctx
    if not ctx.source:
        raise ValueError("ingest: the run has no source (StageContext.source)")
    if ingest_stage.finished(store):  # the counts are the table's; not read again here
        return StageRun("ingest", 0, 0, 0, 0, time.perf_counter() - t0, note="resuming with the inputs already listed")
    max_rows = ctx.policy.runtime.driver_max_rows
    rows = ingest_stage.estimated_rows(ctx.storage, ctx.source)
    files = None if rows is not None else ingest_stage.listed_within(ctx.storage, ctx.source, max_rows)
    if (rows is not None and rows > max_rows) or (rows is None and files is None):
        run = ingest_stage.run_distributed if rows is not None else ingest_stage.run_distributed_listing
        counts = run(ctx.storage, ctx.source, ctx.run_id, ctx.policy, store)
        n = sum(counts.values())
        return StageRun("ingest", n, 0, n, 0, time.perf_counter() - t0, note=f"judged by the workers: {counts}")
    store.clear("ingest")  # a crashed run's parts of the distributed path, if any
    rows = sources.ingest_rows(ctx.storage, ctx.source, ctx.run_id, ctx.policy, files=files)
    store.write_part("ingest", rows)
    if progress:
        progress(len(rows), len(rows))
    return StageRun("ingest", len(rows), 0, len(rows), 0, time.perf_counter() - t0)


def run_stage(stage: Stage | type[Stage] | str, ctx: StageContext, store: StageStore,
              progress: Progress | None = None) -> StageRun:
    """Run one stage of the pipeline (a Stage, its class or its name) the way its shape asks."""
    if isinstance(stage, str):
        stage = stage_class(stage)
    if isinstance(stage, type):
        stage = stage(ctx)
    if isinstance(stage, IngestStage):
        return run_ingest_stage(stage, store, progress)
    if isinstance(stage, ShardStage):
        return run_shard_stage(stage.ctx, store, progress)
    if isinstance(stage, TableStage):
        return run_table_stage(stage, store, progress)
    if isinstance(stage, ItemStage):
        return run_media_stage(stage, store, progress)
    raise TypeError(f"{stage.name}: no runner for a {stage.shape} stage of type {type(stage).__name__}")


def _write_shard_task(batch: pa.Table, ctx: StageContext) -> pa.Table:
    out: list[dict] = []
    storage = ctx.storage
    for item in batch.to_pylist():
        rows = json.loads(item["rows_json"])
        out.extend(shard_mod.write_shard(storage, ctx.output, item["shard"], rows))
    return to_table([{**r, "stage": "shard", "status": OK} for r in out], STAGE_SCHEMAS["shard"])


SHARD_INPUT = ShardStage.input_stage  # the last stage before sharding
assert SHARD_INPUT == shard_stage.SHARD_INPUT


def run_shard_stage(ctx: StageContext, store: StageStore, progress: Progress | None = None) -> StageRun:
    """Write all shards from the accepted clips. All-or-nothing: shard membership depends on the
    whole set, so an incomplete earlier attempt is cleared and redone (identical bytes). Small
    tables here, in the driver; larger ones by the workers (``shard_stage``)."""
    t0 = time.perf_counter()
    if not ray_tables.small_tables(store, [SHARD_INPUT, "shard"], ctx.policy.runtime.driver_max_rows):
        n, skipped, seconds = shard_stage.run_distributed(ctx, store, progress, t0)
        return StageRun("shard", n, skipped, n - skipped, 0, seconds)
    accepted = [r for r in store.read(SHARD_INPUT).to_pylist() if r["status"] == OK]
    done = store.read("shard")
    if done.num_rows and set(done.column("item_id").to_pylist()) == {r["item_id"] for r in accepted}:
        return StageRun("shard", len(accepted), len(accepted), 0, 0)
    store.clear("shard")
    ctx.storage.delete_prefix(join(ctx.output, "shards"))
    plan = shard_mod.plan_shards(accepted, ctx.policy)
    if progress:
        progress(0, len(plan))
    if not plan:
        return StageRun("shard", 0, 0, 0, 0)
    ensure_ray()
    _quiet_ray_data()
    items = [{"shard": p["shard"], "rows_json": json.dumps(p["rows"])} for p in plan]
    ds = ray.data.from_arrow([pa.Table.from_pylist([it]) for it in items])
    ds = _map_batches(ds, _write_shard_task, fn_kwargs={"ctx": ctx}, batch_size=1, batch_format="pyarrow",
                      num_cpus=0.5, **_bounded_retries(ctx.policy.runtime.task_retries))
    rows: list[dict] = []
    n = 0
    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows.extend(block.to_pylist())
        n += len({r["shard"] for r in block.to_pylist()})
        if progress:
            progress(n, len(plan))
    if len({r["item_id"] for r in rows}) != len(accepted):
        raise RuntimeError(f"shard: wrote {len(rows)} samples for {len(accepted)} accepted clips; a shard task failed")
    store.write_part("shard", rows)
    return StageRun("shard", len(accepted), 0, len(accepted), 0, time.perf_counter() - t0)
