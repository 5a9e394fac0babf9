"""Start-up of a run: the engines start side by side, and the code every Ray worker imports stays
light (a worker pays its imports before its first task of every run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reelflow.curation import gates
from reelflow.flows import engines as startup  # (`engines` is the session fixture's name)

ROOT = Path(__file__).resolve().parents[1]


def test_the_modules_a_stage_task_imports_do_not_import_torch():
    # Every Ray task of every stage unpickles functions of curation.pipeline; torch there cost each
    # fresh worker ~2.5 s (it came in through webdataset, which only the shard writer needs).
    code = ("import sys, curation.pipeline, curation.stages, curation.table_stages;"
            "print(sorted(m for m in ('torch', 'webdataset', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_start_engines_starts_only_what_is_not_running(engines):
    # The session's Ray and Prefect API are up: only the gates' GX context is left to start.
    gates._context.cache_clear()
    ready = startup.start_engines()
    assert set(ready) == {"ray", "gx"}
    assert gates._context.cache_info().currsize == 1


def test_an_engine_that_fails_to_start_fails_the_call(engines, monkeypatch):
    def broken() -> None:
        raise RuntimeError("GX context could not be created")

    monkeypatch.setattr(gates, "warm_up", broken)
    with pytest.raises(RuntimeError, match="GX context could not be created"):
        startup.start_engines()


@pytest.mark.integration
def test_the_flow_uses_the_temporary_server_started_beside_ray(tmp_path):
    # A fresh process as `reelflow curate` runs: no Prefect API configured, so start_engines starts
    # Prefect's temporary server; the flow then runs against that same server (one start, not two).
    code = """
import logging, sys
from prefect import flow
from prefect.server.api.server import SubprocessASGIServer
from reelflow.flows.engines import start_engines
ready = start_engines()
assert "prefect" in ready and "ray" in ready and "gx" in ready, ready
server = SubprocessASGIServer()
pid = server.server_process.pid
assert flow(name="after-start")(lambda: 41 + 1)() == 42
assert SubprocessASGIServer().server_process.pid == pid and len(SubprocessASGIServer._instances) == 1
print("ok", sorted(ready))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), RAY_USAGE_STATS_ENABLED="0", DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", GX_ANALYTICS_ENABLED="false")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok ['gx', 'prefect', 'ray']" in out.stdout
    assert out.stderr.count("Starting temporary server") <= 1
