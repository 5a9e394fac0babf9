"""The ``curate`` Prefect flow: one task per stage, each driving a Ray Data pipeline, each gated.

Prefect orchestrates (retries, state, artifacts); Ray does the per-item work inside each task.
Media never passes through Prefect: tasks exchange only the OUTPUT location, and every stage's
result is the persisted table under ``OUTPUT/_stages/<stage>/``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from reelflow.curation import (
    gates,
    ledger,
    pipeline,
    ray_tables,
    run_outputs,
    source_analysis,
    sources,
    table_gates,
)
from reelflow.curation.dataset import OutputError, read_run_info, validate_output, write_run_info
from reelflow.curation.lease import LeaseHeld, LeaseLost, WriterLease
from reelflow.curation.policy import Policy, load_policy
from reelflow.curation.stage_list import PIPELINE
from reelflow.curation.stage_store import StageStore
from reelflow.curation.stage_unit import StageContext
from reelflow.curation.storage import S3Config, Storage

# Set by the CLI to drive its progress bars: (stage, done, total). Tasks also log milestones.
ProgressHook = Callable[[str, int, int], None]
_progress_hook: ProgressHook | None = None


def set_progress_hook(hook: ProgressHook | None) -> None:
    global _progress_hook
    _progress_hook = hook


def _progress(stage: str) -> Callable[[int, int], None]:
    logger = get_run_logger()
    last_logged = [-1]

    def report(done: int, total: int) -> None:
        if _progress_hook:
            _progress_hook(stage, done, total)
        decile = (10 * done // total) if total else 10
        if decile != last_logged[0] and (decile in (0, 10) or decile % 2 == 0):
            last_logged[0] = decile
            logger.info("%s: %d/%d", stage, done, total)

    return report


# -- transient errors are retried; data and gate errors are not ------------------------------------
def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (gates.GateFailed, OutputError, sources.SourceError, ValueError, LeaseHeld, LeaseLost)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    try:
        import botocore.exceptions as be
        import ray.exceptions as re

        transient = (be.EndpointConnectionError, be.ConnectionClosedError, be.ReadTimeoutError,
                     re.RaySystemError, re.WorkerCrashedError, re.NodeDiedError, re.ObjectLostError)
        return isinstance(exc, transient)
    except ImportError:
        return False


def retry_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except Exception as exc:  # the task's own exception
        return _is_transient(exc)
    return False


STAGE_TASK = dict(retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient, cache_policy=NO_CACHE)


@task(name="stage", task_run_name="{stage_name}", **STAGE_TASK)
def stage_task(stage_name: str, ctx: StageContext) -> dict:
    """One stage of ``pipeline.PIPELINE``, run by the Ray adapter the way the stage declares."""
    run = pipeline.run_stage(stage_name, ctx, StageStore(ctx.storage, ctx.output), _progress(stage_name))
    get_run_logger().info("%s: %s", stage_name, run.note or run)
    return run.__dict__


@task(name="gate", task_run_name="gate-{stage_name}", cache_policy=NO_CACHE)
def gate_task(stage_name: str, input_stage: str | None, id_column: str, ctx: StageContext) -> int:
    """The stage's GX suite, run where the table lies (``table_gates``; small tables in this process)."""
    n = table_gates.check_stage_table(stage_name, StageStore(ctx.storage, ctx.output), input_stage, id_column,
                                      ctx.policy)
    get_run_logger().info("gate %s: passed (%d rows)", stage_name, n)
    return n


@task(name="write-outputs", task_run_name="write-outputs", cache_policy=NO_CACHE)
def outputs_task(ctx: StageContext) -> run_outputs.Outputs:
    """The ledger, the index and dataset.json; built in this process for small runs, else by the
    workers (a shuffle by video), the driver adding up counts."""
    store = StageStore(ctx.storage, ctx.output)
    rt = ctx.policy.runtime
    small = ray_tables.small_tables(store, ledger.FUNNEL_STAGES, rt.driver_max_rows)
    out = run_outputs.write_outputs(store, ctx.run_id, ctx.policy.model_dump_json(), in_driver=small,
                               part_rows=rt.part_rows, single_file_max_rows=rt.single_file_max_rows,
                               progress=_progress("outputs"))
    get_run_logger().info("outputs: %d ledger rows, %d clips in the index", sum(n for n in out.summary["videos"].values())
                          + sum(n for n in out.summary["clips"].values()), out.summary["clips"]["accepted"])
    return out


@task(name="report", task_run_name="report", cache_policy=NO_CACHE)
def report_task(ctx: StageContext, funnel: list[dict] | None = None) -> str:
    """report.html: funnel, score histograms with thresholds, contact sheet of kept/rejected clips
    (from a sample of the clips when the tables hold more than ``runtime.driver_max_rows`` rows)."""
    from reelflow.curation.report import write_report

    rules = [{"rule": name, "score": column, "min": r.min, "max": r.max,
              "enabled": r.enabled and _scorer_available(ctx.policy, name), "score_only": r.score_only}
             for name, column, r in ctx.policy.scoring.rules()]
    uri = write_report(ctx.storage, ctx.output, StageStore(ctx.storage, ctx.output), rules, ctx.run_id,
                       funnel=funnel, max_rows=ctx.policy.runtime.driver_max_rows)
    get_run_logger().info("report: %s", uri)
    return uri


@task(name="gate-dataset", task_run_name="gate-dataset", cache_policy=NO_CACHE)
def dataset_gate_task(ctx: StageContext) -> dict:
    return validate_output(ctx.output, ctx.storage)


def expand_date(uri: str, when: datetime | None = None) -> str:
    """``{date}`` in SOURCE or OUTPUT becomes the run's scheduled date (UTC, ``YYYY-MM-DD``).

    A nightly deployment with ``output: s3://curated/nightly/{date}`` writes each night to its
    own OUTPUT (a finished OUTPUT is only ever resumed, never extended), and a retried run of the
    same night resumes that night's OUTPUT.
    """
    if "{date}" not in uri:
        return uri
    if when is None:
        from prefect.runtime import flow_run

        when = flow_run.scheduled_start_time  # outside a flow run: now
    return uri.replace("{date}", when.astimezone(timezone.utc).strftime("%Y-%m-%d"))


def _same_policy(stored: dict, policy: Policy) -> bool:
    """The stored policy, read by this version's model (so settings added since then take their
    defaults), equals ``policy``: an upgrade alone does not block a resume."""
    try:
        return Policy.model_validate(stored).model_dump(mode="json") == policy.model_dump(mode="json")
    except ValueError:  # a setting this version no longer has
        return False


def prepare_run(source: str, output: str, policy: Policy, run_id: str | None, storage: Storage) -> str:
    """Check OUTPUT against an earlier run (same source and policy to resume) and fix the run id."""
    store = StageStore(storage, output)
    info = read_run_info(storage, output)
    if info is not None:
        if info["source"] != source:
            raise OutputError(f"{output} holds a run of source {info['source']!r}; use a new OUTPUT for {source!r}")
        if not _same_policy(info["policy"], policy):
            raise OutputError(f"{output} was curated with a different policy; resume with the same policy or use a new OUTPUT")
        return run_id or info["run_id"]
    run_id = run_id or new_run_id()
    write_run_info(store, run_id, policy, source)
    return run_id


@flow(name="curate", log_prints=True)
def curate(
    source: str,
    output: str,
    policy_path: str | None = None,
    ray_address: str | None = None,
    run_id: str | None = None,
) -> dict:
    """Curate SOURCE (dir, s3:// prefix or manifest) into WebDataset shards under OUTPUT.

    ``policy_path`` is a YAML policy file; without one, the Movie Gen defaults apply. ``{date}`` in
    SOURCE or OUTPUT is replaced by the run's scheduled date (see ``expand_date``).
    """
    source, output = expand_date(source), expand_date(output)
    policy = load_policy(policy_path)
    storage = Storage(S3Config.from_env())
    # One live run per OUTPUT: a second one is refused (exit 2) naming the holder; the lease of a
    # killed run is taken over once it expires (at once when its process is gone on this host).
    info = read_run_info(storage, output)
    run_id = run_id or (info["run_id"] if info else new_run_id())
    lease = WriterLease(storage, output, run_id, ttl_s=policy.runtime.lease_ttl_s).acquire()
    try:
        return _curate(source, output, policy, run_id, storage, lease, ray_address)
    finally:
        lease.release()


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _curate(source: str, output: str, policy: Policy, run_id: str, storage: Storage, lease: WriterLease,
            ray_address: str | None) -> dict:
    logger = get_run_logger()
    run_id = prepare_run(source, output, policy, run_id, storage)
    # Downloads of s3:// sources are cached per run and removed when the run finishes.
    cache_dir = Path(tempfile.gettempdir()) / "reelflow-cache" / run_id
    ctx = StageContext(run_id=run_id, output=output, policy=policy, s3=storage.s3, cache_dir=str(cache_dir),
                       source=source)
    pipeline.ensure_ray(ray_address)
    logger.info("run %s: %s -> %s", run_id, source, output)

    retries = policy.runtime.stage_retries
    runs: dict[str, dict] = {}  # per stage: seconds, and the Ray nodes that did its work
    for stage_cls in PIPELINE:  # ingest .. shard, each gated before the next reads it
        lease.check()  # another run took this OUTPUT over (our lease expired): stop writing
        runs[stage_cls.name] = stage_task.with_options(retries=retries)(stage_cls.name, ctx)
        gate_task(stage_cls.name, stage_cls.input_stage, stage_cls.input_id_column, ctx)
        if stage_cls.name == "score":
            # Every candidate is judged: the sources' analysis frames (a work file of the shots
            # stage's one decode, ~2.8 MB per source second) have no reader left.
            storage.delete_prefix(source_analysis.analysis_root(output))
    outputs = outputs_task(ctx)
    summary = outputs.summary
    dataset_gate_task(ctx)
    report = report_task(ctx, outputs.funnel)

    funnel = [{**row, "seconds": round(runs.get(row["stage"], {}).get("seconds", 0.0), 2),
               "nodes": runs.get(row["stage"], {}).get("nodes", 0)} for row in outputs.funnel]
    create_table_artifact(key="curate-funnel", table=funnel, description=f"Per-stage funnel of run {run_id}")
    create_table_artifact(key="curate-rules", table=rule_funnel(outputs.rule_rejects, policy),
                          description=f"Clips removed by each quality rule, in the order applied (run {run_id})")
    create_markdown_artifact(key="curate-summary", markdown=summary_markdown(summary, output),
                             description=f"Summary of run {run_id}")
    shutil.rmtree(cache_dir, ignore_errors=True)
    return {"summary": summary, "funnel": funnel, "run_id": run_id, "output": output, "report": report}


def _scorer_available(policy: Policy, rule: str) -> bool:
    """Model rules judge nothing without configured weights: report them as disabled."""
    if rule == "aesthetics":
        m = policy.scoring.aesthetics_model
        return bool(m.clip_checkpoint and m.head_checkpoint)
    if rule == "music":
        return bool(policy.scoring.audio_tags_model.model_path)
    return True


def rule_funnel(removed: dict[str, int], policy: Policy) -> list[dict]:
    """Per quality rule, in policy order: clips it removed (the first rule a clip broke, counted
    by the ledger's tasks), like Movie Gen's retention table."""
    rows = []
    for name, column, rule in policy.scoring.rules():
        mode = ("disabled" if not rule.enabled else "disabled (no weights)" if not _scorer_available(policy, name)
                else "score only" if rule.score_only else "enforced")
        rows.append({"rule": name, "score": column, "min": rule.min, "max": rule.max, "mode": mode,
                     "removed": removed.get(name, 0)})
    return rows


def summary_markdown(summary: dict, output: str) -> str:
    v, c = summary["videos"], summary["clips"]
    lines = [
        f"# reelflow curate: run `{summary['run_id']}`",
        f"Output: `{output}`",
        "",
        f"- inputs: **{summary['inputs']}** (accepted {v['accepted']}, rejected {v['rejected']}, failed {v['failed']})",
        f"- clips: **{c['accepted']}** accepted, {c['rejected']} rejected, {c['failed']} failed",
        f"- hours of video: **{summary['hours']:.4f}** in {len(summary['shards'])} shard(s)",
        "",
        "| bucket | clips | seconds | shards |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {b} | {d['clips']} | {d['seconds']:.1f} | {d['shards']} |" for b, d in summary["buckets"].items()]
    return "\n".join(lines)

