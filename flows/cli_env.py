"""The environment every reelflow command sets before it starts an engine (its own module so that
``reelflow.flows.cli`` and the subcommand modules it imports share it without importing each other)."""

from __future__ import annotations

import os


def quiet_env() -> None:
    # No telemetry from the engines we drive.
    for k, v in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "RAY_USAGE_STATS_ENABLED": "0",
                 "DO_NOT_TRACK": "1", "GX_ANALYTICS_ENABLED": "false", "TOKENIZERS_PARALLELISM": "false",
                 # Prefect's ephemeral API waits 20 s to start by default; a busy 2-core machine can
                 # need longer, and failing the run for it helps nobody.
                 "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}.items():
        os.environ.setdefault(k, v)
