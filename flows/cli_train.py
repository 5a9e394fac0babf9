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
    shards: Optional[str] = typer.Argument(None, help="A curated dataset: the OUTPUT of `reelflow curate` (directory or s3:// prefix)."),
    output: Optional[str] = typer.Argument(None, help="Where checkpoints, metrics and the report go (directory or s3:// prefix)."),
    schedule: str = typer.Option("tiny", "--schedule", help="Schedule YAML, or a bundled name: tiny, moviegen."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Existing Ray cluster (default: a local Ray)."),
    plan: Optional[str] = typer.Option(None, "--plan", metavar="SCHEDULE", help=(
        "Print the memory and throughput plan of a schedule (YAML or bundled name) and exit: per stage, the "
        "memory per GPU of ddp / fsdp / hsdp with and without activation checkpointing, whether it fits, "
        "FLOPs per step. Trains nothing; SHARDS and OUTPUT are not needed.")),
    gpus: Optional[int] = typer.Option(None, "--gpus", min=1, help="--plan: GPUs (default: the schedule's num_workers)."),
    gpu_memory: str = typer.Option("80GB", "--gpu-memory", help="--plan: memory of one GPU, e.g. 80GB, 80GiB, 141GB."),
    text_params: Optional[str] = typer.Option(None, "--text-params", help=(
        "--plan: parameters of the frozen text backbone when its config.json is not readable here, e.g. 4.7B "
        "(default: UL2-20B's encoder, 8.72B).")),
) -> None:
    """Train the video, audio and autoencoder models stage by stage (Movie Gen's progressive schedule)."""
    if plan is not None:
        raise typer.Exit(run_plan(plan, gpus, gpu_memory, text_params))
    if shards is None or output is None:
        _console.print("[bold red]error:[/] SHARDS and OUTPUT are required (or use --plan SCHEDULE)")
        raise typer.Exit(EXIT_USAGE)
    raise typer.Exit(run_train(shards, output, schedule, ray_address))


def _parse_count(text: str) -> int:
    """'8.7B' / '470M' / '4.7e9' -> a parameter count."""
    t = text.strip().upper()
    scale = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}.get(t[-1:], 1)
    number = t[:-1] if scale != 1 else t
    value = float(number)  # ValueError for anything else
    if value < 0:
        raise ValueError(text)
    return int(value * scale)


def run_plan(schedule: str, gpus: int | None = None, gpu_memory: str = "80GB", text_params: str | None = None) -> int:
    """Print the plan of `schedule` (training/plan.py). Returns the exit code: nothing starts (no
    Ray, no Prefect), so it runs anywhere; bad input is EXIT_USAGE."""
    from reelflow.training.plan import parse_memory, plan_schedule
    from reelflow.training.schedule import ScheduleError, load_schedule

    try:
        memory = parse_memory(gpu_memory)
    except ValueError as e:
        _console.print(f"[bold red]error:[/] --gpu-memory: {e}")
        return EXIT_USAGE
    try:
        count = _parse_count(text_params) if text_params is not None else None
    except ValueError:
        _console.print(f"[bold red]error:[/] --text-params: not a parameter count: {text_params!r} (e.g. 4.7B, 470M)")
        return EXIT_USAGE
    try:
        loaded = load_schedule(schedule)
        result = plan_schedule(loaded, gpus, memory, text_params=count)
    except (ScheduleError, ValueError) as e:
        _console.print(f"[bold red]error:[/] {e}")
        return EXIT_USAGE
    print_plan(result, schedule)
    return EXIT_OK


def print_plan(plan, name: str) -> None:
    """One table per stage, then what it comes to. docs/training-plan.md explains the columns."""
    from reelflow.training.plan import USABLE_FRACTION, fmt_bytes, fmt_count

    sch = plan.schedule
    device = ("GPU" if plan.on_gpu else "CPU worker") + ("s" if plan.gpus > 1 else "")
    precision = "bf16 autocast" if plan.bf16 else "fp32"
    _out.print(f"[bold]plan for '{name}'[/]: {len(plan.stages)} stage(s), {sch.model_size} models, {plan.gpus} "
               f"{device} of {fmt_bytes(plan.gpu_memory)} (fits: peak <= {USABLE_FRACTION:.0%}, "
               f"{fmt_bytes(plan.usable)}), {precision}, AdamW")
    verdicts = []
    for sp in plan.stages:
        st = sp.stage
        shapes = ", ".join(f"{k} {w.frames}x{w.height}x{w.width} px = {w.tokens:,} tokens" for k, w in sp.workloads.items())
        frozen = ", ".join(f"{k} {fmt_count(v)}" for k, v in sp.params.frozen.items())
        t = Table(title=f"{st.name}: {st.model} model, {fmt_count(sp.params.trained)} params trained "
                        f"(frozen on each GPU: {frozen or 'none'})",
                  caption=f"batch {st.global_batch_size} = {sp.per_gpu_batch} a GPU; {shapes}",
                  title_justify="left", caption_justify="left")
        for col in ("strategy", "params", "grads", "optimizer", "frozen", "activations", "temp", "peak", "fits"):
            t.add_column(col, justify="left" if col in ("strategy", "fits") else "right", no_wrap=True)
        for r in sp.rows:
            m = r.memory
            acts = fmt_bytes(m.activations) + (f" (encode {fmt_bytes(m.encode)})" if m.peak_phase == "encode" else "")
            fits = {"yes": "[green]fits[/]", "tight": "[yellow]tight[/]", "no": "[red]does not fit[/]"}[r.fits]
            label = r.option.label + (" *" if r.configured else "") + (" <" if r is sp.recommended else "")
            t.add_row(label, fmt_bytes(m.params), fmt_bytes(m.grads), fmt_bytes(m.optimizer), fmt_bytes(m.frozen),
                      acts, fmt_bytes(m.temporaries), fmt_bytes(m.peak), fits)
        _out.print(t)
        flops = f"{sp.flops_per_step / 1e15:,.2f} PFLOP a step ({sp.flops_per_step / plan.gpus / 1e12:,.1f} TFLOP a GPU"
        flops += f"; ~{sp.seconds_per_step:,.1f} s at 40% MFU of an H100)" if sp.seconds_per_step else ")"
        _out.print(f"  {flops}")
        for note in sp.notes:
            _out.print(f"  note: {note}")
        if sp.recommended:
            verdict = f"{sp.recommended.option.label} ({fmt_bytes(sp.recommended.memory.peak)} a GPU)"
            _out.print(f"  [bold]{st.name}[/]: use {verdict}")
        else:
            _out.print(f"  [bold]{st.name}[/]: [red]no strategy fits[/] as reelflow runs this stage. It needs:")
            for i, need in enumerate(sp.needs, 1):
                _out.print(f"    {i}. {need}")
            if sp.then:
                verdict = (f"none fits; after {len(sp.needs)} change(s): {sp.then.option.short} "
                           f"({fmt_bytes(sp.then.memory.peak)} a GPU)")
                _out.print(f"    then {sp.then.option.short} fits ({fmt_bytes(sp.then.memory.peak)} a GPU)")
            else:
                verdict = "none fits"
        ddp = next(r for r in sp.rows if r.option.strategy == "ddp")
        states = ddp.memory.params + ddp.memory.grads + ddp.memory.optimizer
        if states > plan.usable:
            verdict += f"; ddp never fits: {fmt_bytes(states)} of parameters, gradients and AdamW states a GPU alone"
        verdicts.append((st.name, verdict))
        _out.print()
    _out.print("[bold]summary[/] (* the schedule's setting, < recommended; ddp keeps 16 bytes a trained parameter "
               "on every GPU)")
    for stage, verdict in verdicts:
        _out.print(f"  {stage}: {verdict}")


def run_train(shards: str, output: str, schedule: str = "tiny", ray_address: str | None = None) -> int:
    """Run the train flow with progress bars; print the stages. Returns the exit code."""
    from reelflow.flows.cli_env import quiet_env

    quiet_env()
    from reelflow.curation import output_tables
    from reelflow.curation.dataset import OutputError
    from reelflow.curation.gates import GateFailed
    from reelflow.curation.storage import Storage, is_s3
    from reelflow.training.handoff import check_schedule_fits
    from reelflow.training.schedule import ScheduleError, load_schedule

    try:  # fail fast, before Prefect or Ray start
        plan = load_schedule(schedule)
        check_schedule_fits(plan)
    except ScheduleError as e:
        _console.print(f"[bold red]error:[/] {e}")
        return EXIT_USAGE
    if not output_tables.exists(Storage(), shards, output_tables.INDEX):
        _console.print(f"[bold red]error:[/] {shards} is not a curated dataset (no index.parquet); "
                       "run `reelflow curate` first")
        return EXIT_USAGE
    schedule_ref = str(Path(schedule).resolve()) if Path(schedule).is_file() else schedule
    shards = shards if is_s3(shards) else str(Path(shards).resolve())
    output = output if is_s3(output) else str(Path(output).resolve())
    _console.print(f"training {len(plan.stages)} stage(s) of '{schedule}' ({plan.model_size} models, "
                   f"{plan.num_workers} worker(s)) on {shards}")

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from reelflow.flows import train_flow

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
        from reelflow.flows import engines

        with engines.running(ray_address, warm_curation=False), progress:  # Ray, Prefect's temporary server and GX side by side
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
    from reelflow.training.val_metrics import format_val

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
