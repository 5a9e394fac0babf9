"""The ``train`` Prefect flow: gate the shards, then one task per schedule stage, each a Ray Train
job, each gated; then the final checkpoint, the metrics table and a report.

Prefect orchestrates (retries, state, artifacts); Ray Train runs the workers. Checkpoints never
pass through Prefect: tasks exchange the OUTPUT location, and each stage publishes
``OUTPUT/stages/<NN>_<name>/model.pt`` for the next. A rerun into the same OUTPUT skips finished
stages and resumes a stage that stopped half-way from its latest checkpoint.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from reelflow.curation import output_tables
from reelflow.curation.dataset import OutputError, validate_output
from reelflow.curation.storage import S3Config, Storage, join
from reelflow.flows.curate_flow import STAGE_TASK, expand_date
from reelflow.training import gates
from reelflow.training.eval import check_clip_checkpoint
from reelflow.training.handoff import check_schedule_fits
from reelflow.training.schedule import Schedule, load_schedule
from reelflow.training.val_metrics import format_val

RUN_FILE = "run.json"

# Set by the CLI to drive its progress bars: (stage, step, iterations, metric row).
ProgressHook = Callable[[str, int, int, dict], None]
_progress_hook: ProgressHook | None = None


def set_progress_hook(hook: ProgressHook | None) -> None:
    global _progress_hook
    _progress_hook = hook


def _stage_progress(name: str, iterations: int) -> Callable[[dict], None]:
    logger = get_run_logger()
    logged = [-1]

    def report(row: dict) -> None:
        step = int(row.get("step", 0))
        if _progress_hook:
            _progress_hook(name, step, iterations, row)
        decile = 10 * step // max(iterations, 1)
        if decile != logged[0]:  # about ten lines per stage, however long it runs
            logged[0] = decile
            val = format_val(row)  # each kind's val loss, its aspect buckets in brackets
            logger.info("%s: step %d/%d loss %.4f lr %.2e %.1f samples/s %s", name, step, iterations,
                        row.get("loss", float("nan")), row.get("lr", 0.0), row.get("samples_per_s") or 0.0, val)

    return report


def _as_today(stored: dict) -> dict | None:
    """A run.json schedule read through today's Schedule model: fields added since it was written
    take their defaults, so an older run still resumes; None if it no longer validates."""
    try:
        return Schedule.model_validate(stored).model_dump(mode="json")
    except ValueError:
        return None


# Where and how a schedule runs, not what it trains: a run resumes on more or fewer workers (a lost
# node, a bigger cluster) or under another parallelism, from the same sharded state (training/train_state.py),
# and with or without precomputed latents (the same latents as encoding on the fly, training/latents.py).
RESOURCE_FIELDS = ("num_workers", "cpus_per_worker", "use_gpu", "max_failures")
STAGE_RESOURCE_FIELDS = ("parallelism", "latents")


def _what_it_trains(schedule: dict | None) -> dict | None:
    if schedule is None:
        return None
    out = {k: v for k, v in schedule.items() if k not in RESOURCE_FIELDS}
    out["stages"] = [{k: v for k, v in st.items() if k not in STAGE_RESOURCE_FIELDS} for st in schedule["stages"]]
    return out


def prepare_run(schedule: Schedule, schedule_ref: str, shards: str, output: str, storage: Storage) -> dict:
    """OUTPUT/run.json: a rerun must name the same shards and a schedule that trains the same to
    resume (it may run on another number of workers or another parallelism)."""
    uri = join(output, RUN_FILE)
    wanted = {"shards": shards, "schedule": schedule.model_dump(mode="json")}
    if storage.exists(uri):
        info = json.loads(storage.read_bytes(uri))
        if info["shards"] != shards:
            raise OutputError(f"{output} holds training on {info['shards']!r}; use a new OUTPUT for {shards!r}")
        if _what_it_trains(_as_today(info["schedule"])) != _what_it_trains(wanted["schedule"]):
            raise OutputError(f"{output} was trained with a different schedule; resume with the same schedule "
                              "or use a new OUTPUT")
        return info
    info = {**wanted, "schedule_ref": schedule_ref, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    storage.write_bytes(uri, json.dumps(info, indent=1).encode())
    return info


@task(name="gate-shards", task_run_name="gate-shards", cache_policy=NO_CACHE)
def gate_shards_task(shards: str, schedule: Schedule) -> dict:
    """The curated dataset's own suite (shards <-> index <-> ledger), then what training needs."""
    from reelflow.training.data import ShardDataset
    from reelflow.training.handoff import model_config
    from reelflow.training.loop import batch_specs

    storage = Storage(S3Config.from_env())
    summary = validate_output(shards, storage)
    index = output_tables.read(storage, shards, output_tables.INDEX).to_pandas()
    data = ShardDataset(shards, storage)
    config = model_config(schedule)
    eligible = {}
    for stage in schedule.stages:
        specs = batch_specs(schedule, stage, config, "train")
        eligible[stage.name] = min(len(data.eligible(spec)) for spec in specs.values())
    gates.check_training_data(index, schedule, eligible)
    get_run_logger().info("gate-shards: %d clips; usable per stage %s", len(index), eligible)
    return {**summary, "eligible": eligible}


@task(name="train-stage", task_run_name="stage-{index}", **STAGE_TASK)
def stage_task(schedule: Schedule, index: int, shards: str, output: str) -> dict:
    from dataclasses import asdict

    from reelflow.training.trainer import run_stage

    logger = get_run_logger()
    stage = schedule.stages[index]
    logger.info("stage %d/%d %s: %s model on %s data at %d px, %d steps", index + 1, len(schedule.stages),
                stage.name, stage.model, stage.data, stage.resolution, stage.iterations)
    outcome = run_stage(schedule, index, shards, output, on_progress=_stage_progress(stage.name, stage.iterations))
    logger.info("stage %s: %s", stage.name, "already done" if outcome.skipped else
                f"{outcome.steps} steps in {outcome.seconds:.1f}s, loss {outcome.final_loss:.4f}, {outcome.val}")
    return asdict(outcome)


@task(name="latents", task_run_name="latents-{index}", **STAGE_TASK)
def latents_task(schedule: Schedule, index: int, shards: str, output: str) -> dict:
    """Before a ``latents: true`` stage: encode its video samples with the frozen TAE of the
    checkpoint the stage starts from (training/latents.py), into OUTPUT/latents/<NN>_<name>/.
    Idempotent: complete latents are reused, a run that stopped resumes, a finished stage needs none.
    The latent gate failing stops the flow (exit 3)."""
    from dataclasses import asdict

    from reelflow.training.latents import describe
    from reelflow.training.trainer import precompute_latents, read_outcome

    logger = get_run_logger()
    storage = Storage(S3Config.from_env())
    stage = schedule.stages[index]
    if read_outcome(storage, output, schedule, index) is not None:
        logger.info("latents %s: the stage is done already; nothing to encode", stage.name)
        return {"skipped": True}
    name = f"{stage.name} latents"
    logged = [-1]

    def progress(done: int, total: int) -> None:
        if _progress_hook:
            _progress_hook(name, done, total, {})
        decile = 10 * done // max(total, 1)
        if decile != logged[0]:
            logged[0] = decile
            logger.info("%s: %d/%d clips", name, done, total)

    summary = precompute_latents(schedule, index, shards, output, storage, progress=progress)
    logger.info("latents %s: %s", stage.name, describe(summary))
    for key, reason in list(summary.failures.items())[:10]:
        logger.warning("latents %s: %s failed: %s", stage.name, key, reason)
    return asdict(summary)


@task(name="gate-stage", task_run_name="gate-{index}", cache_policy=NO_CACHE)
def gate_stage_task(schedule: Schedule, index: int, output: str) -> int:
    from reelflow.training.trainer import stage_metrics

    rows = stage_metrics(Storage(S3Config.from_env()), output, schedule, index)
    gates.check_stage_metrics(rows, schedule.stages[index], expect_val=schedule.val_fraction > 0)
    return len(rows)


@task(name="eval-stage", task_run_name="eval-{index}", cache_policy=NO_CACHE)
def eval_stage_task(schedule: Schedule, index: int, output: str) -> dict:
    """Sample the stage's model on the schedule's prompt set and measure the samples; then the
    stage's learning gate. A finished evaluation (summary.json) is reused on a rerun."""
    import shutil
    import tempfile
    from pathlib import Path

    from reelflow.training.eval import evaluate_stage
    from reelflow.training.loop import MODEL_FILE
    from reelflow.training.trainer import stage_dir

    storage = Storage(S3Config.from_env())
    stage = schedule.stages[index]
    eval_dir = join(stage_dir(output, schedule, index), "eval")
    summary_uri = join(eval_dir, "summary.json")
    if storage.exists(summary_uri):
        summary = json.loads(storage.read_bytes(summary_uri))
    else:
        with tempfile.TemporaryDirectory(prefix="reelflow-eval-") as tmp:
            model = storage.localize(join(stage_dir(output, schedule, index), MODEL_FILE), tmp)
            local = Path(tmp) / "eval"
            summary = evaluate_stage(model, stage.model, schedule.eval, local)
            for f in sorted(local.rglob("*")):  # summary.json last: it marks the evaluation done
                if f.is_file() and f.name != "summary.json":
                    storage.upload_file(f, join(eval_dir, str(f.relative_to(local))))
            storage.upload_file(local / "summary.json", summary_uri)
            shutil.rmtree(local, ignore_errors=True)
    shown = ", ".join(f"{k} {v:.3g}" for k, v in summary.items() if v is not None)
    get_run_logger().info("eval %s: %s", stage.name, shown)
    gates.check_learning(summary, stage)
    return summary


@task(name="finish", task_run_name="finish", cache_policy=NO_CACHE)
def finish_task(schedule: Schedule, output: str, outcomes: list[dict], evals: list[dict] | None = None) -> dict:
    """OUTPUT/model.pt, OUTPUT/metrics.parquet (training rows, then one ``split: eval`` row per
    evaluated stage with its ``eval_*`` metrics) and OUTPUT/report.html."""
    from reelflow.training.report import write_training_report
    from reelflow.training.trainer import copy_final, stage_metrics

    storage = Storage(S3Config.from_env())
    model = copy_final(storage, output, schedule)
    rows = []
    for i in range(len(schedule.stages)):
        rows += [{**r, "stage_index": i} for r in stage_metrics(storage, output, schedule, i)]
    eval_rows = [{"stage": schedule.stages[i].name, "stage_index": i, "split": "eval",
                  "step": schedule.stages[i].iterations, **{f"eval_{k}": v for k, v in summary.items()}}
                 for i, summary in enumerate(evals or []) if summary]
    frame = pd.DataFrame(rows + eval_rows)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf)
    storage.write_bytes(join(output, "metrics.parquet"), buf.getvalue())
    report = write_training_report(storage, output, schedule, outcomes, rows, evals=evals)
    return {"model": model, "metrics": join(output, "metrics.parquet"), "report": report}


@flow(name="train", log_prints=True)
def train(
    shards: str,
    output: str,
    schedule: str = "tiny",
    ray_address: str | None = None,
) -> dict:
    """Train the schedule's stages on the curated dataset SHARDS into OUTPUT.

    ``schedule`` is a YAML file or a bundled name (``tiny``, ``moviegen``); ``shards`` the OUTPUT of a
    curate run (a directory or s3:// prefix holding index.parquet and shards/). ``{date}`` in
    SHARDS or OUTPUT is replaced by the run's scheduled date, as in the curate flow.
    """
    from reelflow.curation.pipeline import ensure_ray

    logger = get_run_logger()
    shards, output = expand_date(shards), expand_date(output)
    plan = load_schedule(schedule)
    check_schedule_fits(plan)
    check_clip_checkpoint(plan.eval)  # a mistyped CLIP path fails now, not after the first stage trained
    storage = Storage(S3Config.from_env())
    prepare_run(plan, schedule, shards, output, storage)
    ensure_ray(ray_address)
    logger.info("train %s on %s -> %s (%d stages)", schedule, shards, output, len(plan.stages))
    data = gate_shards_task(shards, plan)
    outcomes, evals = [], []
    for i in range(len(plan.stages)):
        if plan.stages[i].latents:  # encoded with the TAE the stage starts from, once
            latents_task(plan, i, shards, output)
        outcomes.append(stage_task(plan, i, shards, output))
        gate_stage_task(plan, i, output)
        # Every stage's model is sampled and measured; its `expect:` is the learning gate.
        evals.append(eval_stage_task(plan, i, output) if plan.eval.enabled else {})
    result = finish_task(plan, output, outcomes, evals)

    table = [{"stage": o["name"], "model": o["model"], "steps": o["steps"], "seconds": round(o["seconds"], 1),
              "final_loss": _r(o["final_loss"]), **{k: _r(v) for k, v in o["val"].items()},
              "samples_per_s": _r(o["samples_per_s"]), "resumed": o["resumed"], "skipped": o["skipped"]}
             for o in outcomes]
    create_table_artifact(key="train-eval", table=[{"stage": o["name"], **{k: _r(v) for k, v in e.items()}}
                                                   for o, e in zip(outcomes, evals)],
                          description=f"What each stage's model generates, measured (training/eval.py), in {output}")
    create_table_artifact(key="train-stages", table=table, description=f"Stages of the training run in {output}")
    create_markdown_artifact(key="train-summary", markdown=summary_markdown(schedule, shards, output, table, result),
                             description=f"Training run in {output}")
    return {**result, "stages": outcomes, "evals": evals, "output": output, "shards": shards, "data": data}


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 5)


def summary_markdown(schedule: str, shards: str, output: str, table: list[dict], result: dict) -> str:
    lines = [f"# reelflow train: `{schedule}`", f"Shards: `{shards}`  ", f"Output: `{output}`", "",
             "| stage | model | steps | seconds | loss | val | samples/s |", "|---|---|---:|---:|---:|---|---:|"]
    for r in table:
        val = format_val(r)
        lines.append(f"| {r['stage']} | {r['model']} | {r['steps']} | {r['seconds']} | {r['final_loss']} | {val} | "
                     f"{r['samples_per_s']} |")
    lines += ["", f"Final checkpoint: `{result['model']}` (`reelflow generate --checkpoint ...`)",
              f"Report: `{result['report']}`"]
    return "\n".join(lines)

