"""Training throughput per stage against an in-memory PyTorch loop, measured in the same run.

Baseline = a plain single-process loop on the same model, optimizer and per-step batch shapes
(loss -> backward -> clip -> AdamW step, as `training.loop.run_stage_loop` does), cycling over
batches decoded once up front: no data pipeline, no Ray, no checkpoints, one torch thread like a
Ray Train worker (OMP_NUM_THREADS=1). Ours = the real stage, `training.trainer.run_stage` (Ray
Train TorchTrainer, shard decoding, metric reports, checkpoint and hand-off), read back from its
metric rows. Each stage runs in schedule order, because it starts from the one before's
checkpoint; the baseline of a stage is timed just before it runs, on the models it starts from.

    .venv/bin/python bench/train_throughput.py [--schedule tiny] [--clips 12] [--iterations 30]
        [--stages tae,t2i_32,...] [--dataset CURATED_DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

for k, v in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "RAY_USAGE_STATS_ENABLED": "0", "DO_NOT_TRACK": "1"}.items():
    os.environ.setdefault(k, v)

import checkout  # noqa: E402,F401  (reelflow from this checkout when it is not installed)

from reelflow.training.schedule import Schedule, load_schedule  # noqa: E402

WARMUP_STEPS = 2  # untimed baseline steps: first-call allocations and autograd set-up


@dataclass
class StageResult:
    name: str
    model: str
    data: str
    batch: int  # global samples per step
    decode_ms_per_batch: float  # in-process decode of the prefetched batches (1 thread)
    baseline_steps: int
    baseline_samples_per_s: float
    steps: int
    ours_samples_per_s: float  # steady state: logged intervals after the first
    ours_mean_samples_per_s: float | None  # StageOutcome.samples_per_s: mean over every interval
    data_wait_frac: float  # time-weighted over the same intervals
    step_s: float  # time in the training loop (last row's elapsed_s)
    fit_s: float  # StageOutcome.seconds: wall of trainer.fit()
    fixed_s: float  # fit_s - step_s: Ray Train start-up, model build, checkpoint and hand-off
    run_stage_s: float  # wall of run_stage(), with the model.pt / metrics upload

    @property
    def ratio(self) -> float:
        return self.ours_samples_per_s / self.baseline_samples_per_s


def bench_schedule(name: str, stages: list[str] | None, iterations: int, log_every: int | None) -> Schedule:
    """The schedule to run: a subset of its stages, fewer iterations, a few metric rows, no
    validation batches (only the forced final pass, which then reads nothing)."""
    raw = load_schedule(name).model_dump(mode="json")
    if stages:
        unknown = sorted(set(stages) - {s["name"] for s in raw["stages"]})
        if unknown:
            raise SystemExit(f"unknown stages {unknown}; {name} has {[s['name'] for s in raw['stages']]}")
        raw["stages"] = [s for s in raw["stages"] if s["name"] in stages]
    every = log_every or max(1, iterations // 6)
    for s in raw["stages"]:
        s.update(iterations=iterations, log_every=every, val_batches=0, eval_every=0, checkpoint_every=0,
                 warmup_steps=min(s["warmup_steps"], iterations))
    if raw["stages"][0]["init"] == "previous":  # a subset may start past the schedule's first stage
        raw["stages"][0]["init"] = "scratch"
    return Schedule.model_validate(raw)


def curated_dataset(root: Path, clips: int) -> Path:
    """Synthetic shapes (320x180, 24 fps, 3 s, with audio) curated by the real CLI."""
    import yaml
    from typer.testing import CliRunner

    from reelflow.curation.policy import DEMO_POLICY_FILE
    from reelflow.flows.cli import app
    from reelflow.training.synthetic_shapes import write_synthetic_dataset

    manifest = write_synthetic_dataset(root / "src", num_clips=clips, seed=0, width=320, height=180, fps=24,
                                       seconds=3.0)
    # As tests/training/conftest.py: the small slow shapes score just under the motion floor, so
    # the motion rules only score; this measures training, not the curation rules.
    policy = yaml.safe_load(DEMO_POLICY_FILE.read_text())
    policy["scoring"] = {"motion": {"score_only": True}, "static": {"score_only": True}}
    (root / "policy.yaml").write_text(yaml.safe_dump(policy))
    out = root / "curated"
    r = CliRunner().invoke(app, ["curate", str(manifest), str(out), "--policy", str(root / "policy.yaml")])
    if r.exit_code != 0:
        raise SystemExit(f"curate failed ({r.exit_code}):\n{r.output}")
    return out


def baseline(schedule: Schedule, index: int, dataset: str, output: str, prefetch: int,
             steps: int) -> tuple[float, float]:
    """(samples/s, decode ms per batch) of the in-memory loop for stage `index`."""
    import torch

    from reelflow.curation.storage import Storage
    from reelflow.training.loop import StageRunner, kind_at, step_generator
    from reelflow.training.trainer import worker_config

    stage = schedule.stages[index]
    runner = StageRunner(worker_config(schedule, index, dataset, output, Storage()), rank=0, world_size=1)
    module = runner.module
    optimizer = runner.make_optimizer(module)
    t0 = time.perf_counter()
    held = {kind: [runner.next_batch(kind) for _ in range(prefetch)] for kind in runner.specs}
    decode_ms = (time.perf_counter() - t0) * 1000 / (prefetch * len(held))
    cursors = {kind: itertools.cycle(batches) for kind, batches in held.items()}
    samples, t0 = 0, 0.0
    for step in range(WARMUP_STEPS + steps):
        if step == WARMUP_STEPS:
            samples, t0 = 0, time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = stage.lr_at(step)
        batch = next(cursors[kind_at(stage, schedule.seed, step)])
        loss = runner.loss(module, batch, step_generator(schedule.seed, 0, step))["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if stage.grad_clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), stage.grad_clip)
        optimizer.step()
        loss.item()  # the real loop reads the loss every step (a sync point on GPU)
        samples += len(batch.keys)
    return samples / (time.perf_counter() - t0), decode_ms


def steady_state(rows: list[dict]) -> tuple[float, float]:
    """(samples/s, data-wait share) over the logged intervals after the first (warm-up)."""
    train = [r for r in rows if r["split"] == "train"]
    prev = [{"samples": 0, "elapsed_s": 0.0}] + train[:-1]
    pairs = list(zip(prev, train))[1:] or list(zip(prev, train))
    dts = [r["elapsed_s"] - p["elapsed_s"] for p, r in pairs]
    samples = sum(r["samples"] - p["samples"] for p, r in pairs)
    wait = sum(r["data_wait_frac"] * dt for (_, r), dt in zip(pairs, dts))
    return samples / sum(dts), wait / sum(dts)


def run(schedule: Schedule, dataset: str, output: str, prefetch: int, baseline_steps: int | None) -> list[StageResult]:
    import torch

    from reelflow.curation.storage import Storage
    from reelflow.training.trainer import run_stage, stage_metrics

    torch.set_num_threads(1)  # as a Ray Train worker (OMP_NUM_THREADS=1)
    results = []
    for i, stage in enumerate(schedule.stages):
        # Time the same steps ours is measured over (all but the first logged interval).
        k = baseline_steps or max(1, stage.iterations - stage.log_every)
        print(f"[{stage.name}] baseline: {k} in-memory steps ...", flush=True)
        base, decode_ms = baseline(schedule, i, dataset, output, prefetch, k)
        print(f"[{stage.name}] ours: run_stage, {stage.iterations} steps ...", flush=True)
        t0 = time.perf_counter()
        outcome = run_stage(schedule, i, dataset, output)
        run_s = time.perf_counter() - t0
        rows = stage_metrics(Storage(), output, schedule, i)
        ours, wait = steady_state(rows)
        step_s = [r for r in rows if r["split"] == "train"][-1]["elapsed_s"]
        results.append(StageResult(
            name=stage.name, model=stage.model, data=stage.data, batch=stage.global_batch_size,
            decode_ms_per_batch=decode_ms, baseline_steps=k,
            # A single process runs one worker's batch: ideal data parallelism is num_workers x that.
            baseline_samples_per_s=base * schedule.num_workers, steps=outcome.steps, ours_samples_per_s=ours,
            ours_mean_samples_per_s=outcome.samples_per_s, data_wait_frac=wait, step_s=step_s,
            fit_s=outcome.seconds, fixed_s=outcome.seconds - step_s, run_stage_s=run_s))
    return results


def table(results: list[StageResult], total_s: float) -> str:
    lines = ["| stage | model / data | batch | decode ms/batch | baseline samples/s | ours samples/s | ours / baseline "
             "| data wait | step s | fit s | fixed s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.name} | {r.model} / {r.data} | {r.batch} | {r.decode_ms_per_batch:.0f} "
                     f"| {r.baseline_samples_per_s:.1f} | {r.ours_samples_per_s:.1f} | {r.ratio:.2f}x "
                     f"| {r.data_wait_frac:.0%} | {r.step_s:.1f} | {r.fit_s:.1f} | {r.fixed_s:.1f} |")
    step = sum(r.step_s for r in results)
    fit = sum(r.fit_s for r in results)
    lines.append(f"| **schedule** | | | | | | | | **{step:.1f}** | **{fit:.1f}** | **{fit - step:.1f}** |")
    lines.append("")
    lines.append(f"Whole schedule (every run_stage call, uploads included): {total_s:.1f} s.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schedule", default="tiny")
    ap.add_argument("--dataset", help="an existing curated dataset (default: curate synthetic shapes in a temp dir)")
    ap.add_argument("--clips", type=int, default=12, help="synthetic clips to curate when no --dataset")
    ap.add_argument("--stages", help="comma-separated subset, run in schedule order (default: all)")
    ap.add_argument("--iterations", type=int, default=30, help="steps per stage")
    ap.add_argument("--log-every", type=int, help="steps per metric row (default: iterations // 6)")
    ap.add_argument("--prefetch", type=int, default=8, help="batches per kind held in memory for the baseline")
    ap.add_argument("--baseline-steps", type=int, help="timed baseline steps (default: iterations - log_every)")
    ap.add_argument("--json", help="write the raw numbers here")
    args = ap.parse_args()

    import ray

    from reelflow.curation.pipeline import ensure_ray
    from reelflow.training.handoff import check_schedule_fits

    schedule = bench_schedule(args.schedule, args.stages.split(",") if args.stages else None, args.iterations,
                              args.log_every)
    check_schedule_fits(schedule)
    with tempfile.TemporaryDirectory(prefix="reelflow-train-bench-") as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        if args.dataset:
            dataset = str(Path(args.dataset).resolve())
        else:
            print(f"curating {args.clips} synthetic clips ...", flush=True)
            dataset = str(curated_dataset(tmp, args.clips))
        curate_s = time.perf_counter() - t0
        ray_started = not ray.is_initialized()  # curate leaves its local Ray running
        t0 = time.perf_counter()
        ensure_ray(None)
        ray_s = time.perf_counter() - t0
        results = run(schedule, dataset, str(tmp / "train"), args.prefetch, args.baseline_steps)
    total_s = sum(r.run_stage_s for r in results)  # the baselines, timed in between, are not counted

    print()
    print(f"schedule: {args.schedule}, stages {[s.name for s in schedule.stages]}, {args.iterations} steps each, "
          f"metric row every {schedule.stages[0].log_every}; {schedule.num_workers} Ray Train worker(s), 1 thread each")
    print(f"dataset: {dataset if args.dataset else f'{args.clips} synthetic clips, curated in {curate_s:.1f} s'}; "
          f"Ray start-up {f'{ray_s:.1f} s' if ray_started else 'done by curate'} (not counted)")
    print()
    print(table(results, total_s))
    print()
    ratio = sum(r.ratio for r in results) / len(results)
    fixed = sum(r.fixed_s for r in results)
    wait = sum(r.data_wait_frac for r in results) / len(results)
    print(f"Steady state, the real stage runs at {ratio:.2f}x the in-memory loop on average (data wait {wait:.0%} "
          f"of step time); fixed cost {fixed:.1f} s = {fixed / total_s:.0%} of the schedule's {total_s:.1f} s "
          f"({fixed / len(results):.1f} s per stage).")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": vars(args), "schedule": schedule.model_dump(mode="json"), "curate_s": curate_s, "ray_s": ray_s,
            "total_s": total_s, "stages": [asdict(r) | {"ratio": r.ratio} for r in results]}, indent=1))
        print(f"raw numbers: {args.json}")


if __name__ == "__main__":
    main()
