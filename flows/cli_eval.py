"""`reelflow eval`: sample a checkpoint on a prompt set and measure the samples (registered by flows/cli.py).

Exit codes: 0 evaluated (whatever the scores: a learning gate inside the schedule is what stops
runs), 2 bad usage (missing checkpoint, unreadable prompt set, a CLIP checkpoint that is missing or
does not load).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

_console = Console(stderr=True, soft_wrap=True)
_out = Console(soft_wrap=True)

# What each summary metric means, for the printed table (definitions: training/shape_metrics.py).
METRIC_HELP = {
    "present": "one object visible in >= 80% of frames",
    "colour": "object colour = the prompt's",
    "shape": "object shape = the prompt's",
    "direction": "first motion = the prompt's direction",
    "sync_ok": "bounce-sync error <= 1 video frame",
    "silence_ok": "no sound away from bounces",
    "sync_error_ms": "median |audio onset - visual bounce|",
    "v2a_sync_ok": "audio for rendered ground-truth video: bounce-sync error <= 1 frame",
    "v2a_silence_ok": "audio for rendered ground-truth video: no sound away from bounces",
    "v2a_sync_error_ms": "audio for rendered ground-truth video: median sync error",
    "clip_score": "mean cosine(CLIP text of the prompt, mean CLIP image embedding of <= 8 frames)",
}


def eval_command(
    checkpoint: Path = typer.Argument(..., help="Generation checkpoint (.pt): a stage's model.pt or the final one."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompt set (YAML or JSONL); default: the bundled shapes probe."),
    out: Path = typer.Option(Path("eval"), "--out", help="Where samples, metrics.parquet and contact_sheet.png go."),
    seeds: int = typer.Option(1, "--seeds", min=1, help="Samples per prompt (seeds 0..N-1)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Sampler steps (default: the model's)."),
    clip_checkpoint: Optional[str] = typer.Option(
        None, "--clip-checkpoint", metavar="PATH",
        help="open_clip weights (state-dict file or open_clip model dir; path or s3://): adds clip_score, the "
             "prompt-sample CLIP similarity. Default: none, and no clip_score."),
    clip_model: Optional[str] = typer.Option(None, "--clip-model", metavar="NAME",
                                             help="open_clip architecture of a --clip-checkpoint file (e.g. ViT-B-32)."),
    clip_model_config: Optional[str] = typer.Option(
        None, "--clip-model-config", metavar="JSON",
        help="open_clip model-config JSON for an architecture open_clip does not build in (its stem = --clip-model)."),
) -> None:
    """Generate every prompt of a prompt set and measure whether each sample follows its prompt."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from reelflow.training.checkpoint import CheckpointError, load_checkpoint
    from reelflow.training.eval import ClipEvalConfig, ClipEvalError, evaluate, evaluate_tae, load_prompts

    if (clip_model or clip_model_config) and not clip_checkpoint:
        _console.print("[bold red]error:[/] --clip-model / --clip-model-config need --clip-checkpoint PATH")
        raise typer.Exit(2)
    clip = ClipEvalConfig(clip_checkpoint, clip_model, clip_model_config) if clip_checkpoint else None
    try:
        models = load_checkpoint(checkpoint)
        specs = load_prompts(prompts)
    except (CheckpointError, ValueError, OSError) as e:
        _console.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2) from None
    try:
        with Progress(TextColumn("sampling"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=_console, transient=True) as bar:
            task = bar.add_task("sampling", total=len(specs) * seeds)
            result = evaluate(models, specs, seeds=seeds, out_dir=out, steps=steps, clip=clip,
                              progress=lambda done, total: bar.update(task, completed=done))
    except ClipEvalError as e:  # raised before any sampling: the CLIP model loads first
        _console.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2) from None
    tae = evaluate_tae(models, specs)
    print_summary({**result.summary, **tae}, len(result.rows))
    for name, path in result.files.items():
        _out.print(f"{name + ':':<15}{path}")


def print_summary(summary: dict, n: int) -> None:
    from reelflow.training.eval import CLIP_DISABLED

    t = Table(title=f"evaluation on {n} sample(s)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("meaning")
    for key, value in summary.items():
        shown = "-" if value is None else (f"{value:.0f} ms" if key.endswith("_ms") else
                                           f"{value:.2f} dB" if key.startswith("tae_psnr") else
                                           f"{value:.3f}" if key in ("tae_ssim", "clip_score") else f"{100 * value:.0f}%")
        meaning = METRIC_HELP.get(key, TAE_HELP.get(key, ""))
        if value is None:  # say why there is no number rather than leave a bare dash
            meaning += (" (not measured: no sample drew a bounce at a wall)" if key.startswith("sync")
                        else " (not measured on these samples)")
        t.add_row(key, shown, meaning)
    if "clip_score" not in summary:  # the evaluation had no CLIP model: say so, and how to get one
        t.add_row("clip_score", "off", CLIP_DISABLED)
    _out.print(t)


TAE_HELP = {
    "tae_psnr": "TAE reconstruction of the probe's ground truth",
    "tae_psnr_first_frame": "TAE reconstruction, first frame (encoded on its own)",
    "tae_psnr_later_frames": "TAE reconstruction, later frames (compressed in time)",
    "tae_ssim": "TAE reconstruction, structural similarity",
    "tae_object_present": "object still there after encode -> decode",
    "tae_object_colour": "object keeps its colour after encode -> decode",
    "tae_object_shape": "object keeps its shape after encode -> decode",
    "tae_object_direction": "object still moves the way the ground truth does after encode -> decode",
}
