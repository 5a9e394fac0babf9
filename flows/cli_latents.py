"""`reelflow latents`: encode a curated dataset with a frozen TAE into latent shards, for a schedule
stage that declares `latents: true` (training/latents.py; registered by flows/cli.py).

Exit codes as the other commands: 0 done (clips that failed are ledger rows, listed), 1 unexpected,
2 bad usage or input (no such dataset, checkpoint, schedule or stage; a stage that cannot use fixed
latents; an OUTPUT holding other latents), 3 the latent gate failed. Rerunning the same command
resumes: finished parts are kept, the rest are encoded; a complete OUTPUT is left as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

EXIT_OK, EXIT_USAGE, EXIT_GATE = 0, 2, 3

_console = Console(stderr=True, soft_wrap=True)
_out = Console(soft_wrap=True)


def latents_command(
    dataset: str = typer.Argument(..., help="A curated dataset: the OUTPUT of `reelflow curate` (directory or s3:// prefix)."),
    output: str = typer.Argument(..., help="Where the latent shards, index, ledger and latents.json go (directory or s3://)."),
    checkpoint: str = typer.Option(..., "--checkpoint", help="Generation checkpoint whose frozen TAE encodes (a stage's "
                                                             "model.pt: the one the latents stage starts from)."),
    schedule: str = typer.Option("tiny", "--schedule", help="Schedule YAML, or a bundled name: tiny, moviegen."),
    stage: Optional[str] = typer.Option(None, "--stage", help="The stage whose samples to encode (resolution, frames, "
                                                              "fps); default: the first with latents: true."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Existing Ray cluster (default: a local Ray)."),
    part_size: int = typer.Option(64, "--part-size", min=1, help="Clips per part: the unit of work and of resume."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Encoding actors (default: one per GPU, "
                                                                         "else half the CPUs)."),
    kill_at_part: Optional[int] = typer.Option(None, "--kill-at-part", hidden=True,
                                               help="Testing: SIGKILL this command and its worker at a worker's N-th part."),
) -> None:
    """Precompute a stage's video latents with the frozen TAE (resumable; the trainer reads them)."""
    raise typer.Exit(run_latents_command(dataset, output, checkpoint, schedule, stage, ray_address, part_size,
                                         workers, kill_at_part))


def run_latents_command(dataset: str, output: str, checkpoint: str, schedule: str = "tiny", stage: str | None = None,
                        ray_address: str | None = None, part_size: int = 64, workers: int | None = None,
                        kill_at_part: int | None = None) -> int:
    from reelflow.flows.cli_env import quiet_env

    quiet_env()
    import os

    from reelflow.curation import output_tables
    from reelflow.curation.gates import GateFailed
    from reelflow.curation.storage import Storage, is_s3
    from reelflow.training.checkpoint import CheckpointError
    from reelflow.training.data import DataError
    from reelflow.training.handoff import spatial_multiple
    from reelflow.training.latents import LatentsError, load_tae, run_latents, stage_spec
    from reelflow.training.schedule import ScheduleError, load_schedule

    storage = Storage()
    try:  # every input checked before Ray starts
        plan = load_schedule(schedule)
        chosen = _pick_stage(plan, stage)
        if not output_tables.exists(storage, dataset, output_tables.INDEX):
            raise LatentsError(f"{dataset} is not a curated dataset (no index.parquet); run `reelflow curate` first")
        config, _ = load_tae(checkpoint, storage)
        spec = stage_spec(plan, chosen, spatial_multiple(config))
    except (ScheduleError, LatentsError, CheckpointError) as e:
        _console.print(f"[bold red]error:[/] {e}")
        return EXIT_USAGE
    dataset = dataset if is_s3(dataset) else str(Path(dataset).resolve())
    output = output if is_s3(output) else str(Path(output).resolve())
    checkpoint = checkpoint if is_s3(checkpoint) else str(Path(checkpoint).resolve())
    _console.print(f"encoding the clips of {dataset} for stage {chosen.name} ({spec.frames} frames at {spec.fps:g} fps, "
                   f"{spec.resolution} px) with the TAE of {checkpoint}")

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from reelflow.curation.pipeline import ensure_ray

    progress = Progress(TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=_console, transient=False)
    bar = progress.add_task("clips", total=None)
    faults = {"kill_at_part": kill_at_part, "driver_pid": os.getpid()} if kill_at_part else None
    try:
        ensure_ray(ray_address)
        with progress:
            summary = run_latents(dataset, output, checkpoint, spec, stage=chosen, part_size=part_size,
                                  workers=workers, storage=storage, faults=faults,
                                  progress=lambda done, total: progress.update(bar, completed=done, total=total))
    except GateFailed as e:
        _console.print(f"[bold red]stopped by the latent gate[/]\n{e}")
        return EXIT_GATE
    except (LatentsError, DataError, CheckpointError) as e:
        _console.print(f"[bold red]error:[/] {e}")
        return EXIT_USAGE
    print_summary(summary)
    return EXIT_OK


def _pick_stage(plan, name: str | None):
    from reelflow.training.latents import LatentsError, check_stage_can_use_latents

    if name is None:
        chosen = next((s for s in plan.stages if s.latents), None)
        if chosen is None:
            raise LatentsError("no stage of the schedule declares latents: true; name one with --stage")
    else:
        chosen = next((s for s in plan.stages if s.name == name), None)
        if chosen is None:
            raise LatentsError(f"no stage {name!r} in the schedule (stages: {', '.join(s.name for s in plan.stages)})")
    check_stage_can_use_latents(chosen)
    return chosen


def print_summary(summary, limit: int = 15) -> None:
    from reelflow.curation.storage import join
    from reelflow.training.latents import INDEX_FILE, LEDGER_FILE, MANIFEST_FILE, describe

    t = Table(title="latents per aspect bucket")
    for col in ("bucket", "clips", "pixels (T, H, W)", "latents (C, T, h, w)"):
        t.add_column(col, justify="left" if col == "bucket" else "right")
    for bucket, info in summary.buckets.items():
        t.add_row(bucket, str(info["clips"]), " x ".join(map(str, info["pixels"])), " x ".join(map(str, info["shape"])))
    _out.print(t)
    if summary.failed:
        f = Table(title=f"clips not encoded ({summary.failed})")
        f.add_column("clip")
        f.add_column("reason")
        for key, reason in list(summary.failures.items())[:limit]:
            f.add_row(key, reason or "")
        _out.print(f)
        if summary.failed > limit:
            _out.print(f"... and {summary.failed - limit} more: see {LEDGER_FILE}")
    _out.print(describe(summary))
    _out.print(f"index:    {join(summary.output, INDEX_FILE)}")
    _out.print(f"ledger:   {join(summary.output, LEDGER_FILE)}")
    _out.print(f"manifest: {join(summary.output, MANIFEST_FILE)}")
