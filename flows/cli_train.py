"""`reelflow train`: run the progressive schedule on a curated dataset (registered by flows/cli.py).

Same exit codes as `reelflow curate`: 0 done, 1 unexpected, 2 bad usage or configuration,
3 a data-quality gate stopped the run. Rerunning the same command resumes: finished stages are
skipped and a stage that stopped half-way continues from its latest checkpoint.
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


def train_command(
    shards: str = typer.Argument(..., help="A curated dataset: the OUTPUT of `reelflow curate` (directory or s3:// prefix)."),
    output: str = typer.Argument(..., help="Where checkpoints, metrics and the report go (directory or s3:// prefix)."),
    schedule: str = typer.Option("tiny", "--schedule", help="Schedule YAML, or a bundled name: tiny, moviegen."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Existing Ray cluster (default: a local Ray)."),
) -> None:
    """Train the video, audio and autoencoder models stage by stage (Movie Gen's progressive schedule)."""
    raise typer.Exit(run_train(shards, output, schedule, ray_address))


def run_train(shards: str, output: str, schedule: str = "tiny", ray_address: str | None = None) -> int:
    """Run the train flow with progress bars; print the stages. Returns the exit code."""
    from flows.cli_env import quiet_env

    quiet_env()
    from curation.dataset import OutputError
    from curation.gates import GateFailed
    from curation.storage import Storage, is_s3, join
    from training.handoff import check_schedule_fits
    from training.schedule import ScheduleError, load_schedule

    try:  # fail fast, before Prefect or Ray start
        plan = load_schedule(schedule)
        check_schedule_fits(plan)
    except ScheduleError as e:
        _console.print(f"[bold red]error:[/] {e}")
        return EXIT_USAGE
    if not Storage().exists(join(shards, "index.parquet")):
        _console.print(f"[bold red]error:[/] {shards} is not a curated dataset (no index.parquet); "
                       "run `reelflow curate` first")
        return EXIT_USAGE
    schedule_ref = str(Path(schedule).resolve()) if Path(schedule).is_file() else schedule
    shards = shards if is_s3(shards) else str(Path(shards).resolve())
    output = output if is_s3(output) else str(Path(output).resolve())
    _console.print(f"training {len(plan.stages)} stage(s) of '{schedule}' ({plan.model_size} models, "
                   f"{plan.num_workers} worker(s)) on {shards}")

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flows import train_flow

    progress = Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=_console, transient=False)
    bars: dict[str, int] = {}

    def hook(stage: str, step: int, iterations: int, row: dict) -> None:
        if stage not in bars:
            bars[stage] = progress.add_task(stage, total=iterations, info="")
        info = f"loss {row['loss']:.4f}" if row.get("loss") is not None else ""
        progress.update(bars[stage], completed=step, info=info)

    train_flow.set_progress_hook(hook)
    try:
        from flows.engines import start_engines

        start_engines(ray_address)  # Ray, Prefect's temporary server and GX side by side
        with progress:
            result = train_flow.train(schedule=schedule_ref, shards=shards, output=output, ray_address=ray_address)
    except GateFailed as e:
        _console.print(f"[bold red]stopped by a data-quality gate[/]\n{e}")
        return EXIT_GATE
    except (OutputError, ScheduleError) as e:
        _console.print(f"[bold red]error:[/] {e}")
        return EXIT_USAGE
    finally:
        train_flow.set_progress_hook(None)
    print_result(result)
    return EXIT_OK


def print_result(result: dict) -> None:
    from training.val_metrics import format_val

    t = Table(title="training stages")
    for col in ("stage", "model", "steps", "seconds", "loss", "val loss", "samples/s", "note"):
        t.add_column(col, justify="left" if col in ("stage", "model", "val loss", "note") else "right",
                     no_wrap=col in ("stage", "note"))
    for o in result["stages"]:
        val = format_val(o["val"])  # e.g. "video 0.41 (16x9 0.40, 9x16 0.47)": per aspect bucket in brackets
        note = "skipped (done)" if o["skipped"] else "resumed" if o["resumed"] else ""
        loss = f"{o['final_loss']:.4f}" if o["final_loss"] is not None else "-"
        rate = f"{o['samples_per_s']:.1f}" if o["samples_per_s"] else "-"
        t.add_row(o["name"], o["model"], str(o["steps"]), f"{o['seconds']:.1f}", loss, val, rate, note)
    _out.print(t)
    _out.print(f"checkpoint: {result['model']}")
    _out.print(f"metrics:    {result['metrics']}")
    _out.print(f"report:     {result['report']}  (open it in a browser)")
    _out.print(f"sample:     reelflow generate {result['model']} --prompt \"...\" --out sample.mp4")
