"""Composition: stages as Ray Data operators, results streamed back into persisted stage tables.

The driver streams each finished block from Ray Data and commits rows to part files as they
arrive, so a crash loses at most one part's worth of work and a rerun does only what is missing.
Rows whose worker died (a crash Ray could not retry away) are written as ``failed`` rows: every
input still reaches the table, and the run goes on.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import ray

from curation import shard as shard_mod
from curation.records import CLIP, FAILED, OK, SCORE_ANALYSIS_SCHEMA, STAGE_ORDER, STAGE_SCHEMAS, clip_key, to_table
from curation.stage_store import StageStore
from curation.stages import (CaptionStage, ClipPlanStage, ExtractStage, FilterStage, ProbeStage, ScoreStage,
                             ShotsStage, Stage, StageContext)
from curation.table_stages import BalanceStage, DedupStage, TableStage
from curation.storage import join

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


def ensure_ray(address: str | None = None) -> None:
    """Connect to ``address`` / ``RAY_ADDRESS`` when given, else start (or reuse) a local Ray."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        import curation
        import models
        import training

        # Ship our packages to the cluster's workers so they run the same code as the driver
        # (curation stages; the training loop and the models for Ray Train workers).
        kwargs["runtime_env"] = {"py_modules": [curation, models, training]}
    ray.init(address=address, **kwargs)
    _quiet_ray_data()


def _quiet_ray_data() -> None:
    logging.getLogger("ray.data").setLevel(logging.ERROR)
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


def _run_batch(batch: pa.Table, stage: Stage) -> pa.Table:
    if not getattr(stage, "_ready", False):
        stage.setup()
        stage._ready = True
    out: list[dict] = []
    for row in batch.to_pylist():
        out.extend(stage.run_row(row))
    return to_table(out, STAGE_SCHEMAS[stage.name])


class _StageActor:
    """Ray actor wrapper: ``setup`` (model loading) runs once per actor, not per batch."""

    def __init__(self, stage: Stage):
        self.stage = stage
        self.stage.setup()
        self.stage._ready = True

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _run_batch(batch, self.stage)


def _run_analyze_batch(batch: pa.Table, stage: Stage) -> pa.Table:
    return to_table([stage.run_analyze(row) for row in batch.to_pylist()], SCORE_ANALYSIS_SCHEMA)


def _pending(store: StageStore, stage: Stage) -> tuple[list[dict], int, int]:
    inputs = store.read(stage.input_stage)
    ok = [r for r in inputs.to_pylist() if r["status"] == OK]
    done = store.done_inputs(stage.name, stage.input_id_column)
    pending = [r for r in ok if r["item_id"] not in done]
    return pending, len(ok), len(ok) - len(pending)


def run_media_stage(
    stage: Stage, store: StageStore, progress: Progress | None = None, actors: int | None = None
) -> StageRun:
    """Run one stage over the pending inputs with Ray Data; commit results as they stream in."""
    t0 = time.perf_counter()
    ctx = stage.ctx
    retried = store.drop_retryable(stage.name)  # transient failures of an earlier run: try again
    if retried:
        log.info("%s: retrying %d item(s) that failed with a transient error", stage.name, retried)
    pending, n_ok, skipped = _pending(store, stage)
    if progress:
        progress(0, len(pending))
    if not pending:
        return StageRun(stage.name, n_ok, skipped, 0, 0)
    ensure_ray()
    _quiet_ray_data()
    bs = stage.rows_per_task or ctx.policy.runtime.batch_size
    seen: set[str] = set()
    _stream(stage, store, pending, bs, seen, progress, actors)
    crashed = [r for r in pending if r["item_id"] not in seen]
    if crashed and bs > 1:
        # A task of many rows died with its worker: run those rows again one a task, so only the
        # row that kills its worker is recorded as crashed, not the rows that shared its task.
        log.warning("%s: a task of %d rows lost its worker; retrying its rows one a task", stage.name, len(crashed))
        _stream(stage, store, crashed, 1, seen, progress, actors, total=len(pending))
        crashed = [r for r in crashed if r["item_id"] not in seen]
    if crashed:
        log.warning("%s: %d item(s) lost their worker; recording them as failed", stage.name, len(crashed))
        store.write_part(stage.name, [_crashed_row(stage, r) for r in crashed])
    if progress:
        progress(len(pending), len(pending))
    return StageRun(stage.name, n_ok, skipped, len(pending), len(crashed), time.perf_counter() - t0)


def _stream(stage: Stage, store: StageStore, rows: list[dict], bs: int, seen: set[str],
            progress: Progress | None, actors: int | None, total: int | None = None) -> None:
    """Run ``stage`` over ``rows`` (``bs`` a Ray task) and commit what comes back as it streams in;
    the input ids answered are added to ``seen``."""
    ctx = stage.ctx
    blocks = [to_table(rows[i : i + bs], STAGE_SCHEMAS[stage.input_stage]) for i in range(0, len(rows), bs)]
    ds = ray.data.from_arrow(blocks)
    common = dict(batch_size=bs, batch_format="pyarrow", zero_copy_batch=True, num_cpus=stage.num_cpus)
    if stage.num_gpus:
        common["num_gpus"] = stage.num_gpus
    retries = ctx.policy.runtime.task_retries
    cpus = int(ray.available_resources().get("CPU", 1))
    if stage.has_cpu_operator and stage.uses_actor:
        # The fused CPU operator (decode + CPU scorers) as plain tasks, feeding the model actors.
        cpu_only = {k: v for k, v in common.items() if k != "num_gpus"}
        ds = _map_batches(ds, _run_analyze_batch, fn_kwargs={"stage": stage}, **_bounded_retries(retries), **cpu_only)
        # Leave CPUs for the analyze tasks unless the models sit on GPUs.
        cpus = cpus if stage.num_gpus else max(1, cpus // 2)
    if stage.uses_actor:
        n = actors or getattr(stage, "actors", None) or max(1, min(len(blocks), cpus))
        ds = _map_batches(ds, _StageActor, fn_constructor_kwargs={"stage": stage},
                          compute=ray.data.ActorPoolStrategy(size=n), **_bounded_retries(retries, actor=True),
                          **common)
    else:
        ds = _map_batches(ds, _run_batch, fn_kwargs={"stage": stage}, **_bounded_retries(retries), **common)

    id_col = stage.input_id_column
    buffer: list[dict] = []
    part_rows = ctx.policy.runtime.part_rows
    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        out = block.to_pylist()
        buffer.extend(out)
        seen.update(r[id_col] for r in out)
        if len(buffer) >= part_rows:
            store.write_part(stage.name, buffer)
            buffer = []
        if progress:
            progress(len(seen), total or len(rows))
    store.write_part(stage.name, buffer)


def _crashed_row(stage: Stage, row: dict) -> dict:
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
    does not cover exactly the current inputs is cleared and recomputed (deterministically)."""
    t0 = time.perf_counter()
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


# Every stage between ingest and shard, in order (records.STAGE_ORDER): per-item stages run as Ray
# Data operators, whole-table stages (dedup, balance) over the persisted table. Score and dedup run
# before extract: only the clips they keep are encoded.
STAGES: list[type[Stage] | type[TableStage]] = [
    ProbeStage, FilterStage, ShotsStage, ClipPlanStage, ScoreStage, DedupStage,
    ExtractStage, CaptionStage, BalanceStage,
]
assert [s.name for s in STAGES] == list(STAGE_ORDER[1:-1]), "pipeline.STAGES and records.STAGE_ORDER disagree"


def run_stage(stage_cls: type[Stage] | type[TableStage], ctx: StageContext, store: StageStore,
              progress: Progress | None = None) -> StageRun:
    if issubclass(stage_cls, TableStage):
        return run_table_stage(stage_cls(ctx.policy), store, progress)
    return run_media_stage(stage_cls(ctx), store, progress)


def _write_shard_task(batch: pa.Table, ctx: StageContext) -> pa.Table:
    out: list[dict] = []
    storage = ctx.storage
    for item in batch.to_pylist():
        rows = json.loads(item["rows_json"])
        out.extend(shard_mod.write_shard(storage, ctx.output, item["shard"], rows))
    return to_table([{**r, "stage": "shard", "status": OK} for r in out], STAGE_SCHEMAS["shard"])


SHARD_INPUT = "balance"  # the last stage before sharding


def run_shard_stage(ctx: StageContext, store: StageStore, progress: Progress | None = None) -> StageRun:
    """Write all shards from the accepted clips. All-or-nothing: shard membership depends on the
    whole set, so an incomplete earlier attempt is cleared and redone (identical bytes)."""
    t0 = time.perf_counter()
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
