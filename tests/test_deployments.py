"""Deployments: prefect.yaml against the real flow, deployments built from code, and `reelflow serve`
on a real `prefect server start` (its own SQLite under a temporary PREFECT_HOME), triggered through
the API, running a real curation to COMPLETED."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from reelflow.curation.policy import DEMO_POLICY_FILE as _DEMO_POLICY

# The demo policy, scoring without rejecting: the generated test patterns carry text by design,
# and these tests are about scheduling, not the quality rules.
DEMO_POLICY_FILE = Path(tempfile.mkdtemp(prefix="reelflow-deploy-test-")) / "policy.yaml"
DEMO_POLICY_FILE.write_text(yaml.safe_dump({
    **yaml.safe_load(_DEMO_POLICY.read_text()),
    "scoring": {r: {"score_only": True} for r in ("text", "borders", "jitter", "static", "motion")},
}))
from reelflow.flows.curate_flow import curate
from reelflow.flows.deployments import (
    CURATE_DEPLOYMENT,
    NIGHTLY_CRON,
    TRAIN_DEPLOYMENT,
    WORK_POOL,
    CurateSchedule,
    DeploymentConfig,
    TrainTrigger,
    build_deployments,
)

REPO = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO / "prefect.yaml"
PREFECT = str(Path(sys.executable).with_name("prefect"))
FULL_NAME = f"curate/{CURATE_DEPLOYMENT}"

# `python -m flows.cli serve ...` without depending on flows/cli.py registering the command.
SERVE_ENTRY = textwrap.dedent(
    """
    import sys, typer
    from reelflow.flows.cli_serve import serve_command
    app = typer.Typer(add_completion=False)
    app.callback()(lambda: None)  # a group, so the command is invoked by name as in `reelflow serve`
    app.command("serve")(serve_command)
    app(prog_name="reelflow")
    """
)


# -- prefect.yaml ----------------------------------------------------------------------------------
def _curate_entry() -> dict:
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    return next(d for d in spec["deployments"] if d["name"] == CURATE_DEPLOYMENT)


def test_prefect_yaml_entrypoint_resolves_to_the_curate_flow():
    from prefect.flows import load_flow_from_entrypoint

    entry = _curate_entry()
    assert entry["entrypoint"] == "flows/curate_flow.py:curate"
    flow = load_flow_from_entrypoint(str(REPO / entry["entrypoint"]))
    assert flow.name == curate.name
    assert flow.fn.__code__.co_filename == curate.fn.__code__.co_filename


def test_prefect_yaml_parameters_validate_against_the_flow_signature(monkeypatch):
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate
    from prefect.utilities.templating import apply_values

    entry = _curate_entry()
    # `prefect deploy` fills `{{ $VAR }}` from the environment: do the same, with sample values.
    monkeypatch.setenv("REELFLOW_SOURCE", "s3://raw/manifest.csv")
    monkeypatch.setenv("REELFLOW_OUTPUT", "s3://curated/nightly/")
    params = apply_values(entry["parameters"], os.environ, remove_notset=False)
    assert params["source"] == "s3://raw/manifest.csv" and params["output"] == "s3://curated/nightly/"
    assert (REPO / params["policy_path"]).is_file()  # repo-relative: the pull step cds into the checkout
    schema = parameter_schema(curate).model_dump_for_openapi()
    validate(params, schema, raise_on_error=True)  # the schema the server enforces for runs
    assert set(params) <= set(schema["properties"]) and set(schema["required"]) <= set(params)
    curate.validate_parameters(params)  # and the flow's own pydantic check
    with pytest.raises(Exception):
        curate.validate_parameters({**params, "sourse": "typo"})


def test_prefect_yaml_train_deployment_is_manual_and_matches_the_flow(monkeypatch):
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate
    from prefect.utilities.templating import apply_values

    from reelflow.flows.train_flow import train

    spec = yaml.safe_load(PREFECT_YAML.read_text())
    entry = next(d for d in spec["deployments"] if d["name"] == TRAIN_DEPLOYMENT)
    assert entry["entrypoint"] == "flows/train_flow.py:train" and entry["schedules"] == []
    assert entry["work_pool"]["name"] == WORK_POOL.name
    flow = load_flow_from_entrypoint(str(REPO / entry["entrypoint"]))
    assert flow.name == train.name == "train"
    monkeypatch.setenv("REELFLOW_TRAIN_SCHEDULE", "tiny")
    monkeypatch.setenv("REELFLOW_TRAIN_SHARDS", "s3://curated-shards/nightly/2026-11-21")
    monkeypatch.setenv("REELFLOW_TRAIN_OUTPUT", "s3://checkpoints/runs/exp-1")
    params = apply_values(entry["parameters"], os.environ, remove_notset=False)
    assert set(params) == {"schedule", "shards", "output"}
    validate(params, parameter_schema(train).model_dump_for_openapi(), raise_on_error=True)
    train.validate_parameters(params)


def test_prefect_yaml_schedule_work_pool_and_pull_steps():
    from prefect.client.schemas.schedules import CronSchedule

    entry = _curate_entry()
    (sched,) = entry["schedules"]
    assert CronSchedule(cron=sched["cron"], timezone=sched["timezone"]).cron == NIGHTLY_CRON
    assert sched["timezone"] == "UTC" and sched["active"] is True
    assert entry["work_pool"]["name"] == WORK_POOL.name
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    (step,) = spec["pull"]
    assert step == {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $REELFLOW_REPO }}"}}


# -- deployments from code -------------------------------------------------------------------------
def test_curate_deployment_from_code(tmp_path):
    cfg = CurateSchedule(source=str(tmp_path / "m.csv"), output=str(tmp_path / "out"),
                         policy_path=str(DEMO_POLICY_FILE), cron="30 3 * * 1-5", timezone="Europe/Paris")
    dep, train_dep = build_deployments(cfg)
    assert dep.name == CURATE_DEPLOYMENT and dep.flow_name == "curate"
    assert dep.entrypoint == "reelflow.flows.curate_flow.curate"  # module path: independent of the working directory
    assert dep.parameters == {"source": cfg.source, "output": cfg.output, "policy_path": str(DEMO_POLICY_FILE)}
    (sched,) = dep.schedules
    assert sched.schedule.cron == "30 3 * * 1-5" and sched.schedule.timezone == "Europe/Paris"
    assert dep.enforce_parameter_schema
    assert set(dep._parameter_openapi_schema.properties) == {"source", "output", "policy_path", "ray_address", "run_id"}
    # training runs when triggered: no schedule, parameters per run
    assert train_dep.name == TRAIN_DEPLOYMENT and train_dep.flow_name == "train"
    assert train_dep.entrypoint == "reelflow.flows.train_flow.train" and not train_dep.schedules
    assert train_dep.parameters == {}
    assert set(train_dep._parameter_openapi_schema.properties) == {"shards", "output", "schedule", "ray_address"}
    (_, with_defaults) = build_deployments(cfg, TrainTrigger(schedule="tiny", shards=str(tmp_path / "data"),
                                                            output=str(tmp_path / "runs")))
    assert with_defaults.parameters == {"schedule": "tiny", "shards": str(tmp_path / "data"),
                                        "output": str(tmp_path / "runs")}


@pytest.mark.parametrize("bad", [{"cron": "every night"}, {"timezone": "Mars/Olympus"}])
def test_bad_schedule_is_rejected(bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        CurateSchedule(source="s", output="o", **bad).deployment()


def test_unknown_or_mistyped_parameter_is_rejected_when_building():
    with pytest.raises(ValueError, match="sourse"):
        DeploymentConfig(name="x", parameters={"sourse": "s", "output": "o"}).build(curate)
    with pytest.raises(Exception, match="source"):
        DeploymentConfig(name="x", parameters={"source": 3, "output": "o"}).build(curate)


def test_manual_trigger_deployment_has_no_schedule_and_may_leave_parameters_to_the_run():
    # The shape of the train deployment: triggered by hand, parameters given per run.
    dep = DeploymentConfig(name="manual").build(curate)
    assert not dep.schedules and dep.parameters == {}


# -- serve: usage errors ---------------------------------------------------------------------------
def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREFECT_") and k not in ("RAY_ADDRESS", "AWS_ENDPOINT_URL")}
    env.update({"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "RAY_USAGE_STATS_ENABLED": "0"})
    env.update(extra)
    return env


def _serve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", SERVE_ENTRY, "serve", *args]


def test_serve_without_prefect_api_url_exits_2(tmp_path):
    # A fresh PREFECT_HOME: no profile that could set the URL either.
    env = _clean_env(PREFECT_HOME=str(tmp_path / "home"))
    r = subprocess.run(_serve_cmd("--source", str(tmp_path), "--output", str(tmp_path / "o")),
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "PREFECT_API_URL is not set" in r.stderr and "prefect server start" in r.stderr


def test_serve_with_bad_cron_exits_2(tmp_path):
    # Nothing listens on the URL: configuration is checked before any server is contacted.
    env = _clean_env(PREFECT_HOME=str(tmp_path / "home"), PREFECT_API_URL="http://127.0.0.1:9/api")
    r = subprocess.run(_serve_cmd("--source", str(tmp_path), "--output", str(tmp_path / "o"), "--cron", "nightly"),
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "cron" in r.stderr


# -- a real Prefect server -------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process started with start_new_session, with everything it started (flow runs)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory) -> Iterator[str]:
    """`prefect server start` on 127.0.0.1 with its own PREFECT_HOME (and so its own SQLite)."""
    root = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    log = root / "server.log"
    env = _clean_env(PREFECT_HOME=str(root / "home"), PREFECT_UI_ENABLED="false")
    with log.open("wb") as fh:
        proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                env=env, cwd=root, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(OSError):  # not listening yet: poll again below
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start:\n{_tail(log)}")
            time.sleep(0.5)
        yield url
    finally:
        _stop(proc)


@pytest.fixture()
def api(prefect_server):
    """A synchronous Prefect client on the test server."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as client:
            yield client


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory) -> Path:
    """One generated clip with two shots, CC0, in a manifest."""
    from reelflow.curation.samples import make_cut_video

    root = tmp_path_factory.mktemp("tiny-source")
    make_cut_video(root / "clip.mp4", [2.0, 2.0], size=(320, 180))
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["uri", "license", "title"])
        w.writeheader()
        w.writerow({"uri": "clip.mp4", "license": "CC0-1.0", "title": "Generated test patterns"})
    return manifest


def _wait_for(what: str, fn, timeout: float, log: Path, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; log:\n{_tail(log)}")


def _read_deployment(client, name: str = FULL_NAME):
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        return None


def _wait_final(client, flow_run_id, log: Path, timeout: float = 300):
    def final():
        fr = client.read_flow_run(flow_run_id)
        return fr if fr.state and fr.state.is_final() else None

    return _wait_for(f"flow run {flow_run_id} to finish", final, timeout, log, interval=2)


def _assert_curated(out: Path) -> None:
    assert (out / "index.parquet").is_file() and (out / "ledger.parquet").is_file() and (out / "dataset.json").is_file()
    index = pq.read_table(out / "index.parquet").to_pylist()
    shards = sorted((out / "shards").rglob("shard-*.tar"))
    assert index and shards
    assert {r["license"] for r in index} == {"CC0-1.0"}
    assert {out / r["shard"] for r in index} <= set(shards)


@pytest.fixture()
def served(prefect_server, tiny_source, tmp_path) -> Iterator[dict]:
    """A `reelflow serve` process on the test server; yields a function to start it with extra args."""
    procs: list[subprocess.Popen] = []
    log = tmp_path / "serve.log"

    def start(output: Path, *extra: str) -> subprocess.Popen:
        env = _clean_env(PREFECT_API_URL=prefect_server, PREFECT_HOME=str(tmp_path / "client-home"))
        # Run from outside the repo: the deployment's module entrypoint must not depend on cwd.
        workdir = tmp_path / "workdir"
        workdir.mkdir(exist_ok=True)
        with log.open("ab") as fh:
            proc = subprocess.Popen(
                _serve_cmd("--source", str(tiny_source), "--output", str(output),
                           "--policy", str(DEMO_POLICY_FILE), *extra),
                env={**env, "PYTHONPATH": str(REPO)}, cwd=workdir, stdout=fh, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        procs.append(proc)
        return proc

    try:
        yield {"start": start, "log": log}
    finally:
        for p in procs:
            _stop(p)


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_serve_registers_schedule_runs_now_and_runs_a_triggered_flow_to_completion(served, api, tiny_source, tmp_path):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.deployments import run_deployment

    out = tmp_path / "curated"
    proc = served["start"](out, "--run-now")
    log = served["log"]
    dep = _wait_for("the deployment to be registered", lambda: _read_deployment(api), 180, log)
    assert proc.poll() is None, _tail(log)

    # The nightly schedule is on the server, active, in UTC, with the served parameters as defaults.
    (sched,) = dep.schedules
    assert sched.schedule.cron == NIGHTLY_CRON and sched.schedule.timezone == "UTC" and sched.active
    assert not dep.paused
    assert dep.parameters == {"source": str(tiny_source), "output": str(out),
                              "policy_path": str(DEMO_POLICY_FILE.resolve())}
    assert dep.entrypoint == "reelflow.flows.curate_flow.curate" and dep.enforce_parameter_schema

    # --run-now: one run, created by serve itself (the scheduler's own runs are auto_scheduled).
    def manual_runs():
        # limit and sort given: this server (pinned fastapi) rejects the client's nulls for them.
        runs = api.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                                  sort=FlowRunSort.ID_DESC, limit=50)
        return [r for r in runs if not r.auto_scheduled]

    (first,) = _wait_for("the --run-now flow run", manual_runs, 60, log)
    first = _wait_final(api, first.id, log)
    assert first.state.is_completed(), f"{first.state}\n{_tail(log)}"
    _assert_curated(out)
    assert len(manual_runs()) == 1
    # (A second curate run into the same OUTPUT resumes it: test_curate_e2e covers resumes; here
    # the API-triggered run below is the train deployment's.)

    # The train deployment is served beside it: no schedule, triggered through the API with a
    # schedule and the shards just curated, the serving process trains (one tiny stage on real Ray
    # Train) to a checkpoint.
    train_dep = _wait_for("the train deployment", lambda: _read_deployment(api, f"train/{TRAIN_DEPLOYMENT}"), 60, log)
    assert not train_dep.schedules and train_dep.entrypoint == "reelflow.flows.train_flow.train"
    trained = tmp_path / "trained"
    fr = run_deployment(train_dep.id, parameters={"schedule": str(_one_stage_schedule(tmp_path)), "shards": str(out),
                                                  "output": str(trained)}, timeout=0, as_subflow=False)
    fr = _wait_final(api, fr.id, log, timeout=420)
    assert fr.state.is_completed(), f"{fr.state}\n{_tail(log)}"
    assert fr.deployment_id == train_dep.id and fr.parameters["output"] == str(trained)
    assert (trained / "model.pt").is_file() and (trained / "stages" / "00_t2i" / "stage.json").is_file()


def _one_stage_schedule(tmp_path: Path) -> Path:
    """A text-to-image stage of two steps on every clip (no held-out clips: the source is tiny)."""
    path = tmp_path / "one-stage.yaml"
    path.write_text(yaml.safe_dump({
        "model_size": "tiny", "with_audio": False, "val_fraction": 0.0,
        "stages": [{"name": "t2i", "model": "video", "data": "image", "resolution": 32, "global_batch_size": 1,
                    "lr": 1e-3, "iterations": 2, "log_every": 1, "init": "scratch"}],
    }))
    return path


def _prefect_deploy(prefect_server: str, home: Path, name: str, **env: str) -> subprocess.CompletedProcess:
    env = _clean_env(PREFECT_API_URL=prefect_server, PREFECT_HOME=str(home), **env)
    # The repo's prefect.yaml, from the repo root, as a data engineer runs it.
    r = subprocess.run([PREFECT, "--no-prompt", "deploy", "--name", name, "--prefect-file", str(PREFECT_YAML)],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    return r


@pytest.mark.integration
@pytest.mark.timeout(480)
def test_prefect_deploy_then_a_process_worker_runs_the_yaml_deployment(prefect_server, api, tiny_source, tmp_path):
    from prefect.deployments import run_deployment

    from reelflow.flows.deployments import ensure_work_pool

    assert ensure_work_pool()  # a fresh server: created
    assert not ensure_work_pool()  # idempotent
    pool = api.read_work_pool(WORK_POOL.name)
    assert pool.type == "process" and pool.concurrency_limit == 1 and pool.base_job_template

    _prefect_deploy(prefect_server, tmp_path / "home", CURATE_DEPLOYMENT,
                    REELFLOW_SOURCE="s3://raw-video/incoming/manifest.csv", REELFLOW_OUTPUT="s3://curated-shards/nightly/")
    dep = api.read_deployment_by_name(FULL_NAME)
    assert dep.work_pool_name == WORK_POOL.name and dep.entrypoint == "flows/curate_flow.py:curate"
    assert dep.parameters == {"source": "s3://raw-video/incoming/manifest.csv", "output": "s3://curated-shards/nightly/",
                              "policy_path": "curation/policies/default.yaml"}
    (sched,) = dep.schedules
    assert sched.schedule.cron == NIGHTLY_CRON and sched.schedule.timezone == "UTC" and sched.active
    # The checkout is found on the worker at run time, not frozen at deploy time.
    assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $REELFLOW_REPO }}"}}]
    assert dep.job_variables["env"]["RAY_USAGE_STATS_ENABLED"] == "0"

    # A process worker started elsewhere runs a triggered run from the checkout named by REELFLOW_REPO.
    log = tmp_path / "worker.log"
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    env = _clean_env(PREFECT_API_URL=prefect_server, PREFECT_HOME=str(tmp_path / "worker-home"), REELFLOW_REPO=str(REPO))
    with log.open("wb") as fh:
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", WORK_POOL.name, "--limit", "1"],
                                  env=env, cwd=workdir, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out = tmp_path / "by-worker"
        fr = run_deployment(dep.id, parameters={"source": str(tiny_source), "output": str(out),
                                                "policy_path": str(DEMO_POLICY_FILE)}, timeout=0, as_subflow=False)
        fr = _wait_final(api, fr.id, log)
        assert fr.state.is_completed(), f"{fr.state}\n{_tail(log)}"
        _assert_curated(out)
    finally:
        _stop(worker)
