"""``reelflow serve``: register the deployments on a Prefect server and run them from this process.

Registered in the CLI with ``app.command("serve")(serve_command)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from reelflow.flows.deployments import DEFAULT_TIMEZONE, NIGHTLY_CRON  # plain constants: imports no Prefect

# Same meanings as flows/cli.py (not imported from there, so the command stands alone).
EXIT_OK, EXIT_USAGE = 0, 2

_console = Console(stderr=True, soft_wrap=True)

NO_SERVER_HELP = (
    "PREFECT_API_URL is not set. Serving needs a real Prefect server (the ephemeral API runs no "
    "schedules). Start one and point reelflow at it:\n"
    "  prefect server start            # in another terminal; UI on http://127.0.0.1:4200\n"
    "  export PREFECT_API_URL=http://127.0.0.1:4200/api"
)


def _usage_error(msg: str) -> typer.Exit:
    _console.print(f"[bold red]error:[/] {msg}")
    return typer.Exit(EXIT_USAGE)


def _api_url() -> str | None:
    # The env var, or a Prefect profile (`prefect config set PREFECT_API_URL=...`) which sets it too.
    from prefect.settings import PREFECT_API_URL

    return os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value() or None


def serve_command(
    source: str = typer.Option(..., "--source", help="Directory, s3://bucket/prefix, or manifest to curate on each run."),
    output: str = typer.Option(..., "--output", help="Output directory or s3:// prefix; each run resumes into it ({date}: one per scheduled day)."),
    policy: Optional[Path] = typer.Option(None, "--policy", help="Policy YAML (default: Movie Gen defaults)."),
    cron: str = typer.Option(NIGHTLY_CRON, "--cron", help="Cron schedule of the curate deployment (default: nightly 02:00)."),
    timezone: str = typer.Option(DEFAULT_TIMEZONE, "--timezone", help="IANA timezone the cron is read in."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Existing Ray cluster for the runs (default: a local Ray per run)."),
    train_schedule: Optional[str] = typer.Option(None, "--train-schedule", help="Default schedule of triggered train runs (YAML or tiny/moviegen)."),
    train_shards: Optional[str] = typer.Option(None, "--train-shards", help="Default curated dataset of triggered train runs."),
    train_output: Optional[str] = typer.Option(None, "--train-output", help="Default OUTPUT of triggered train runs."),
    run_now: bool = typer.Option(False, "--run-now", help="Also start one curate run immediately."),
    limit: int = typer.Option(1, "--limit", min=1, help="Most flow runs at once."),
) -> None:
    """Serve the curate (cron) and train (manual trigger) deployments on PREFECT_API_URL's server."""
    for k, v in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "RAY_USAGE_STATS_ENABLED": "0", "DO_NOT_TRACK": "1",
                 "GX_ANALYTICS_ENABLED": "false", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(k, v)  # flow runs inherit this environment
    if not _api_url():
        raise _usage_error(NO_SERVER_HELP)

    from pydantic import ValidationError

    from reelflow.curation.policy import PolicyError, load_policy
    from reelflow.curation.storage import is_s3
    from reelflow.flows.deployments import CurateSchedule, TrainTrigger, build_deployments, serve
    from reelflow.training.schedule import ScheduleError, load_schedule

    # A templated source ({date}) names a folder that may only appear by the run's date.
    if "{date}" not in source and not is_s3(source) and not Path(source).exists():
        raise _usage_error(f"SOURCE does not exist: {source}")
    # Runs start in their own process, maybe in another directory: pass absolute local paths.
    source = source if is_s3(source) else str(Path(source).resolve())
    output = output if is_s3(output) else str(Path(output).resolve())
    policy_path = str(policy.resolve()) if policy else None
    try:
        load_policy(policy_path)  # a bad policy fails now, not at the first scheduled run
        config = CurateSchedule(source=source, output=output, policy_path=policy_path,
                                ray_address=ray_address, cron=cron, timezone=timezone)
        if train_schedule:
            load_schedule(train_schedule)  # a bad schedule fails now, not when someone triggers a run
            if Path(train_schedule).exists():
                train_schedule = str(Path(train_schedule).resolve())
        train_shards, train_output = (p if not p or is_s3(p) else str(Path(p).resolve()) for p in (train_shards, train_output))
        trigger = TrainTrigger(schedule=train_schedule, shards=train_shards, output=train_output, ray_address=ray_address)
        deployments = build_deployments(config, trigger)
    except (PolicyError, ScheduleError) as e:
        raise _usage_error(str(e))
    except ValidationError as e:
        raise _usage_error("; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()))
    try:
        serve(deployments, run_now=config.name if run_now else None, limit=limit)
    except KeyboardInterrupt:  # Ctrl-C is how a user stops serving: a normal exit
        typer.echo("stopped serving; scheduled runs stay registered on the server", err=True)
    raise typer.Exit(EXIT_OK)
