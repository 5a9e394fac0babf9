"""The ``reelflow`` command line: curate, validate, demo, train, latents, eval, generate, serve.

Exit codes: 0 done (rejected or failed items are normal outcomes, see the ledger), 1 anything
unexpected, 2 bad usage or configuration, 3 a data-quality gate stopped the run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table

from reelflow.flows.cli_env import quiet_env

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_GATE = 0, 1, 2, 3

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="reelflow: curate licensed video into WebDataset shards and train video and audio generation models on them.")
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


@app.callback()
def _options(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's INFO logs in the terminal.")) -> None:
    # Prefect's INFO logs still reach its API (and UI); the terminal shows progress bars instead.
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")


def _usage_error(msg: str) -> "typer.Exit":
    console.print(f"[bold red]error:[/] {msg}")
    return typer.Exit(EXIT_USAGE)


def _check_source(source: str) -> None:
    from reelflow.curation.storage import is_s3

    if not is_s3(source) and not Path(source).exists():
        raise _usage_error(f"SOURCE does not exist: {source}")


def run_curate(source: str, output: str, policy: Optional[Path], ray_address: Optional[str],
               run_id: Optional[str]) -> int:
    """Run the flow with progress bars; print the funnel. Returns the exit code."""
    quiet_env()
    from reelflow.flows import engines

    # Prefect's temporary server (where no API is configured) starts while the rest is imported.
    server = engines.launch_prefect_server()
    from reelflow.curation import sources
    from reelflow.curation.dataset import OutputError
    from reelflow.curation.gates import GateFailed
    from reelflow.curation.lease import LeaseHeld, LeaseLost
    from reelflow.curation.policy import PolicyError, load_policy
    from reelflow.curation.sources import SourceError
    from reelflow.curation.storage import Storage
    from reelflow.flows.cli_logging import run_log
    from reelflow.flows.curate_flow import expand_date

    source, output = expand_date(source), expand_date(output)
    _check_source(source)
    try:  # fail fast on bad configuration, before Prefect or Ray start
        limits = load_policy(policy).limits
        sources.discover(Storage(), source, limits)
    except (PolicyError, SourceError) as e:
        console.print(f"[bold red]error:[/] {e}")
        return EXIT_USAGE

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from reelflow.flows import curate_flow

    progress = Progress(TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=False)
    bars: dict[str, int] = {}

    def hook(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = progress.add_task(stage, total=max(total, 1))
        progress.update(bars[stage], completed=done if total else 1, total=max(total, 1))

    curate_flow.set_progress_hook(hook)
    with run_log("curate") as log_path:
        try:
            with engines.running(ray_address, server), progress:
                result = curate_flow.curate(source=source, output=output,
                                            policy_path=str(policy) if policy else None,
                                            ray_address=ray_address, run_id=run_id)
        except GateFailed as e:
            console.print(f"[bold red]stopped by a data-quality gate[/]\n{e}")
            console.print(f"full log: {log_path}")
            return EXIT_GATE
        except (PolicyError, SourceError, OutputError, LeaseHeld, LeaseLost) as e:
            console.print(f"[bold red]error:[/] {e}")
            return EXIT_USAGE
        finally:
            curate_flow.set_progress_hook(None)
    print_result(result)
    return EXIT_OK


def print_result(result: dict) -> None:
    from reelflow.curation import output_tables
    from reelflow.curation.storage import Storage, join

    t = Table(title=f"run {result['run_id']}: funnel")
    for col in ("stage", "rows", "passed", "rejected", "failed", "seconds", "nodes"):
        t.add_column(col, justify="left" if col == "stage" else "right")
    for r in result["funnel"]:
        # nodes: Ray nodes whose workers processed the stage's items in this run ("-": none did,
        # the stage had nothing left to do or runs over the whole table in the driver)
        t.add_row(r["stage"], *(str(r[k]) for k in ("rows", "passed", "rejected", "failed")), f"{r['seconds']:.1f}",
                  str(r.get("nodes") or "-"))
    out.print(t)
    _print_not_accepted(result["output"])
    s, o = result["summary"], result["output"]
    out.print(f"clips accepted: [bold]{s['clips']['accepted']}[/] ({s['seconds']:.1f} s) in {len(s['shards'])} shard(s)")
    out.print(f"shards:  {join(o, 'shards')}")
    storage = Storage()
    out.print(f"index:   {output_tables.location(storage, o, output_tables.INDEX)}")
    out.print(f"ledger:  {output_tables.location(storage, o, output_tables.LEDGER)}")
    out.print(f"summary: {join(o, 'dataset.json')}")
    out.print(f"report:  {result['report']}  (open it in a browser)")


def _print_not_accepted(output: str, limit: int = 15) -> None:
    """The inputs that produced no clip, with the ledger's reason: what a person checks first."""
    import pyarrow.compute as pc

    from reelflow.curation import output_tables
    from reelflow.curation.storage import Storage, basename

    ledger = output_tables.read(Storage(), output, output_tables.LEDGER,
                                columns=["kind", "status", "retryable", "source_uri", "stage", "reason"])
    retry = pc.sum(pc.and_(pc.equal(ledger["status"], "failed"), pc.fill_null(ledger["retryable"], False))).as_py() or 0
    videos = ledger.filter(pc.and_(pc.equal(ledger["kind"], "video"), pc.not_equal(ledger["status"], "accepted")))
    n_rows = videos.num_rows
    rows = videos.slice(0, limit).to_pylist()
    if retry:
        out.print(f"[yellow]{retry} item(s) failed with a transient error[/] (throttling, a lost connection or "
                  f"worker): rerun the same command to retry them")
    if not rows:
        return
    t = Table(title=f"inputs not accepted ({n_rows})")
    for col in ("input", "status", "stage", "reason"):
        t.add_column(col)
    for r in rows[:limit]:
        status = r["status"] + (" (retryable)" if r.get("retryable") else "")
        t.add_row(basename(r["source_uri"]) or "(empty uri)", status, r["stage"], r["reason"] or "")
    out.print(t)
    if n_rows > limit:
        out.print(f"... and {n_rows - limit} more: see {output_tables.location(Storage(), output, output_tables.LEDGER)}")


@app.command()
def curate(
    source: str = typer.Argument(..., help="Directory, s3://bucket/prefix, or manifest (.csv/.jsonl/.parquet)."),
    output: str = typer.Argument(..., help="Output directory or s3://bucket/prefix; {date} becomes today's UTC date."),
    policy: Optional[Path] = typer.Option(None, "--policy", help="Policy YAML (default: Movie Gen defaults)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", envvar="RAY_ADDRESS",
                                              help="Existing Ray cluster (default: a local Ray)."),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="Run id (default: new, or the one in OUTPUT when resuming)."),
) -> None:
    """Curate SOURCE into WebDataset shards, an index and a ledger under OUTPUT (resumable)."""
    raise typer.Exit(run_curate(source, output, policy, ray_address, run_id))


@app.command()
def validate(output: str = typer.Argument(..., help="A curated output directory or s3:// prefix.")) -> None:
    """Run the dataset's data-quality suite on OUTPUT: 0 pass, 3 fail."""
    quiet_env()
    from reelflow.curation.dataset import OutputError, validate_output
    from reelflow.curation.gates import GateFailed
    from reelflow.curation.policy import PolicyError

    try:
        res = validate_output(output)
    except GateFailed as e:
        console.print(f"[bold red]dataset validation failed[/]\n{e}")
        raise typer.Exit(EXIT_GATE)
    except (OutputError, PolicyError) as e:
        raise _usage_error(str(e))
    out.print(f"[green]valid[/]: {res['clips']} clips in {res['shards']} shard(s), {res['ledger_rows']} ledger rows")


@app.command()
def demo(
    output: Path = typer.Option(Path("demo_output"), "--output", help="Where to put the demo source, dataset and training run."),
    train: bool = typer.Option(True, "--train/--no-train", help="Also train the tiny schedule on the curated dataset."),
) -> None:
    """Curate the bundled sample videos end to end, then train the tiny schedule on them.

    The source holds real CC/BSD clips, generated cuts, synthetic captioned shapes and bad files."""
    quiet_env()
    from reelflow.curation.policy import DEMO_POLICY_FILE
    from reelflow.curation.samples import build_demo_source

    console.print(f"building demo source under {output / 'source'} ...")
    manifest = build_demo_source(output / "source")
    _add_synthetic_shapes(manifest)
    code = run_curate(str(manifest), str(output / "dataset"), DEMO_POLICY_FILE, None, None)
    if code == EXIT_OK:
        out.print(f"demo source: {manifest} (policy {DEMO_POLICY_FILE})")
    if code == EXIT_OK and train:
        from reelflow.flows.cli_train import run_train

        code = run_train(str(output / "dataset"), str(output / "train"), str(_demo_schedule(output)))
        if code == EXIT_OK:
            _demo_sample_and_eval(output)
    raise typer.Exit(code)


def _demo_schedule(output: Path) -> Path:
    """The tiny schedule, trained on the demo's 64 px shapes only (bucket 1x1). The few real sample
    clips land in other aspect buckets, each batched on its own and up-weighted by concept balancing:
    measured, they took ~a fifth of the TAE's batches and kept it from learning colour at all.
    Written next to the run so the schedule the demo used is there to read."""
    import yaml

    from reelflow.training.schedule import SCHEDULES_DIR

    raw = yaml.safe_load((SCHEDULES_DIR / "tiny.yaml").read_text())
    raw["buckets"] = ["1x1"]
    # The demo has the machine to itself: one worker with every core (its intra-op threads follow
    # cpus_per_worker; at 1 a 2-core machine trains at half speed).
    raw["cpus_per_worker"] = _local_cpus()
    raw["val_fraction"] = 0.1  # ~13 held-out shapes clips still give every stage a validation loss
    # A learning gate on the first link: a TAE that loses the objects (or their colour) stops the demo
    # with exit 3 before the video stages train on its latents. Measured at the end of the demo's TAE
    # stage: present 1.0, colour 0.94-1.0 (BENCHMARKS.md); a TAE that drops colour scores ~0.17. On 6 probe
    # prompts the bounds allow 1 and 3 misses, so run-to-run spread does not stop a good run.
    raw["stages"][0]["expect"] = {"tae_object_present": {"min": 0.8}, "tae_object_colour": {"min": 0.5}}
    # The joint stages on video only: the demo's images are frames of its shapes clips, captioned
    # "moves right" and not moving, and they cost the motion the captions ask for (joint_32: direction
    # 12-17% of probe samples with 25% images, 38-54% without; joint_64 with 10% images took a 32 px
    # model from 83% to 50% where video only kept 85%; BENCHMARKS.md). The recipe (tiny.yaml, Movie
    # Gen) keeps them joint.
    for stage in raw["stages"]:
        if stage["name"] in ("joint_32", "joint_64"):
            stage["data"] = "video"
            stage.pop("image_ratio", None)
    path = output / "schedule.yaml"
    path.write_text("# `reelflow demo`: training/schedules/tiny.yaml on the synthetic shapes only\n" + yaml.safe_dump(raw, sort_keys=False))
    return path


def _local_cpus(cap: int = 8) -> int:
    """CPUs the local Ray has (or will detect): a worker asking for more would wait forever."""
    import ray

    if ray.is_initialized():
        n = int(ray.cluster_resources().get("CPU", 1))
    else:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(n, cap))


def _demo_sample_and_eval(output: Path) -> None:
    """The demo ends with what the trained model makes: a sample mp4 for a shapes prompt, and the
    shapes probe evaluated on the final model (what each sample shows, measured)."""
    from reelflow.flows.cli_eval import print_summary
    from reelflow.training.checkpoint import load_checkpoint
    from reelflow.training.eval import evaluate, probe_prompts
    from reelflow.training.generate import generate

    models = load_checkpoint(output / "train" / "model.pt")
    prompt = probe_prompts()[0].prompt
    sample = generate(models, prompt, output / "sample.mp4", seed=0)
    out.print(f"made:    {sample.path}  ({sample.num_frames} frames {sample.width}x{sample.height}"
              f"{', with audio' if sample.has_audio else ''}): {prompt}")
    console.print("evaluating the final model on the shapes probe ...")
    result = evaluate(models, probe_prompts(), seeds=1, out_dir=output / "eval")
    print_summary(result.summary, len(result.rows))
    out.print(f"eval:    {result.files['contact_sheet']}  ({result.files['metrics']})")


DEMO_SHAPES_CLIPS = 160  # 6 colours x 8 directions x 3 shapes, each seen ~1x
DEMO_LEAD_IN = 0.15  # shapes start behind the centre: the caption's direction holds until ~frame 6 (synthetic_shapes.random_clip)


def _add_synthetic_shapes(manifest: Path, num_clips: int = DEMO_SHAPES_CLIPS) -> None:
    """Captioned CC0 clips with sound (shapes bouncing, a click per bounce), so the tiny models have
    something learnable, with audio, to train on. Appended to the demo manifest.

    Rendered at the tiny model's 64 px and Movie Gen-sized shapes for a 64 px frame (20-35% of
    it): the demo needs many of them (every colour in every direction) and each costs curation
    and training time in proportion to its pixels."""
    import csv

    from reelflow.training.synthetic_shapes import write_synthetic_dataset

    shapes = write_synthetic_dataset(manifest.parent / "media" / "shapes", num_clips=num_clips, seed=0, width=64,
                                     height=64, fps=24, seconds=2.0, size_range=(0.2, 0.35), lead_in=DEMO_LEAD_IN)
    with shapes.open(newline="") as f:
        rows = list(csv.DictReader(f))
    with manifest.open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(rows[0])).writerows(rows)


from reelflow.flows.cli_eval import eval_command  # noqa: E402
from reelflow.flows.cli_generate import generate_command  # noqa: E402  (imports torch lazily)
from reelflow.flows.cli_latents import latents_command  # noqa: E402
from reelflow.flows.cli_serve import serve_command  # noqa: E402
from reelflow.flows.cli_train import train_command  # noqa: E402

app.command("eval")(eval_command)
app.command("generate")(generate_command)
app.command("latents")(latents_command)
app.command("serve")(serve_command)
app.command("train")(train_command)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted; rerun the same command to resume")
        sys.exit(130)
    except SystemExit as e:  # how every command ends (typer raises it with the exit code)
        _exit_without_teardown(e.code)


def _exit_without_teardown(code: int | str | None) -> NoReturn:
    """Exit as a normal exit does, less the interpreter's own teardown of every module and object.

    The exit handlers still run first: Ray's shutdown, the Prefect server's stop, logging's
    flush. What is skipped is freeing the heap that Ray, Prefect, GX and pyarrow built, which took
    ~1.4 s of every ``reelflow curate`` on the 2-core machine, after its last output was written.
    """
    import atexit

    if isinstance(code, str):  # sys.exit("message"): printed, status 1, as the interpreter does
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()  # noqa: SLF001 - what the interpreter runs at exit; os._exit skips it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    main()
