"""Which failures the curate flow retries: transient infrastructure errors, never data or gates."""

import botocore.exceptions as be
import pytest

from reelflow.curation.dataset import OutputError
from reelflow.curation.gates import GateFailed
from reelflow.curation.sources import SourceError
from reelflow.flows.curate_flow import _is_transient


@pytest.mark.parametrize(
    "exc, transient",
    [
        (ConnectionError("reset"), True),
        (TimeoutError(), True),
        (be.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (GateFailed("probe", [], 0), False),
        (SourceError("no manifest"), False),
        (OutputError("other policy"), False),
        (ValueError("bad value"), False),
        (RuntimeError("bug"), False),
    ],
)
def test_only_transient_errors_are_retried(exc, transient):
    assert _is_transient(exc) is transient


@pytest.mark.integration
def test_prefect_retries_a_transient_failure_but_not_a_gate(prefect_harness):
    from prefect import flow, task

    from reelflow.flows.curate_flow import STAGE_TASK

    calls = {"transient": 0, "gate": 0}
    opts = {**STAGE_TASK, "retry_delay_seconds": 0}

    @task(**opts)
    def flaky() -> str:
        calls["transient"] += 1
        if calls["transient"] < 2:
            raise ConnectionError("S3 endpoint went away")
        return "done"

    @task(**opts)
    def gated() -> None:
        calls["gate"] += 1
        raise GateFailed("probe", [], 3)

    @flow
    def run() -> str:
        out = flaky()
        gated()
        return out

    with pytest.raises(GateFailed):
        run()
    assert calls == {"transient": 2, "gate": 1}
