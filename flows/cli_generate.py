"""`reelflow generate`: prompt -> mp4 from a generation checkpoint (registered by flows/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

_STAGES = {"video": "sampling video", "decode": "decoding frames", "audio": "sampling audio",
           "vocode": "reconstructing waveform", "mux": "writing mp4"}


def generate_command(
    checkpoint: Path = typer.Argument(..., help="Generation checkpoint (.pt) written by training."),
    prompt: str = typer.Option(..., "--prompt", help="Text prompt; quote words that must appear on screen."),
    out: Path = typer.Option(..., "--out", help="Output .mp4 path."),
    seconds: Optional[float] = typer.Option(None, "--seconds", min=0.05,
                                            help="Video length in seconds (default: what the checkpoint was trained on, else 2 s)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same video)."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Sampler steps (default: the model's)."),
) -> None:
    """Generate a video (and its soundtrack when the checkpoint has an audio model)."""
    # imported here so that `reelflow --help` does not pay for torch
    from reelflow.training.checkpoint import CheckpointError, load_checkpoint
    from reelflow.training.generate import generate

    console = Console(stderr=True)
    try:
        models = load_checkpoint(checkpoint)
    except CheckpointError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(code=2) from None

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bar:
        tasks: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(_STAGES.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done, total=total)

        try:
            result = generate(models, prompt, out, seconds=seconds, seed=seed, steps=steps, progress=on_progress)
        except ValueError as e:
            console.print(f"[red]error:[/red] {e}")
            raise typer.Exit(code=2) from None

    audio = f", AAC {result.sample_rate} Hz" if result.has_audio else ", no audio model"
    console.print(f"wrote {result.path}: {result.num_frames} frames {result.width}x{result.height} "
                  f"@ {result.fps} fps ({result.duration_s:.2f} s), H.264{audio}")
