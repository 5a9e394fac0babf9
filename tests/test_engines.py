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
    # fresh worker ~2.5 s (it came in through webdataset, which only the shard writer needs);
    # scikit-learn ~2 s (balance's k-means++ seeding, now imported where it is called).
    code = ("import sys, curation.pipeline, curation.stages, curation.table_stages;"
            "print(sorted(m for m in ('torch', 'webdataset', 'transformers', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_start_engines_starts_only_what_is_not_running(engines):
    # The session's Ray and Prefect API are up: only the gates' GX context (and its one data
    # source) is left to start.
    gates._context.cache_clear()
    gates._dataframe_batches.cache_clear()
    ready = startup.start_engines()
    assert set(ready) == {"ray", "gx"}
    assert gates._context.cache_info().currsize == 1 and gates._dataframe_batches.cache_info().currsize == 1


def test_an_engine_that_fails_to_start_fails_the_call(engines, monkeypatch):
    def broken() -> None:
        raise RuntimeError("GX context could not be created")

    monkeypatch.setattr(gates, "warm_up", broken)
    with pytest.raises(RuntimeError, match="GX context could not be created"):
        startup.start_engines()


@pytest.mark.integration
def test_the_flow_runs_against_the_server_launched_beside_ray_and_its_logs_arrive(tmp_path):
    # A fresh process as `reelflow curate` runs: no Prefect API configured, so `running` launches
    # the temporary server itself (Prefect must not start a second one), the flow runs against it,
    # and the flow's logs reach it before it stops (sent on the way out, not left to the exit).
    code = """
import sys
from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.settings import PREFECT_API_URL, temporary_settings
from reelflow.flows import engines

@flow(name="after-start")
def answer():
    get_run_logger().info("hello from the flow")
    return 42

with engines.running() as ready:
    assert set(ready) == {"prefect", "ray", "gx"}, ready
    state = answer(return_state=True)
    assert state.result() == 42
url = engines._server.url
with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:
    logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
assert "hello from the flow" in [r.message for r in logs], [r.message for r in logs]
assert "prefect.server.api.server" not in sys.modules  # the client never imported the server
print("ok", sorted(ready))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), RAY_USAGE_STATS_ENABLED="0", DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", GX_ANALYTICS_ENABLED="false")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok ['gx', 'prefect', 'ray']" in out.stdout
    assert "Starting temporary server" not in out.stderr
