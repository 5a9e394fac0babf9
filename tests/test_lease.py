"""The writer lease on an OUTPUT, on real files and on moto's S3 server (no mocks): a second run is
refused while the first is alive, a SIGKILLed run's lease is taken over once it expires, racing
takers have exactly one winner, and a holder whose lease was taken finds out."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from reelflow.curation.lease import LeaseHeld, LeaseLost, WriterLease, read_lease
from reelflow.curation.storage import Storage, join

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def output(request, tmp_path) -> str:
    """A fresh OUTPUT: a local directory, or a prefix in a new bucket on the S3 server."""
    if request.param == "local":
        return str(tmp_path / "out")
    request.getfixturevalue("s3_server")
    bucket = f"lease-{uuid.uuid4().hex[:12]}"
    Storage().client.create_bucket(Bucket=bucket)
    return f"s3://{bucket}/runs/out"


def write_dead_lease(output: str, run_id: str = "dead-run") -> None:
    """A lease as left by a holder killed long ago: its expiry has passed."""
    past = time.time() - 30
    doc = {"run_id": run_id, "host": "gone-host", "pid": 999999, "token": uuid.uuid4().hex,
           "started": "2020-01-01T00:00:00+00:00", "expires": past, "expires_iso": "2020-01-01T00:00:00+00:00"}
    Storage().write_bytes(join(output, "_lease.json"), json.dumps(doc).encode())


def test_second_run_is_refused_until_the_first_releases(output):
    st = Storage()
    first = WriterLease(st, output, "run-A", ttl_s=30).acquire()
    try:
        with pytest.raises(LeaseHeld) as ei:
            WriterLease(st, output, "run-B", ttl_s=30).acquire()
        msg = str(ei.value)
        assert f"OUTPUT {output}" in msg and "run run-A" in msg
        assert f"pid {os.getpid()} on {socket.gethostname()}" in msg
        assert "wait for it to finish or use another OUTPUT" in msg
        assert ei.value.holder["token"] == first.token
        assert read_lease(st, output)["run_id"] == "run-A"
        first.check()
        assert first.acquire() is first  # already held: no-op
    finally:
        first.release()
    first.release()  # idempotent
    assert read_lease(st, output) is None
    with WriterLease(st, output, "run-B", ttl_s=30) as second:
        assert read_lease(st, output)["token"] == second.token
    assert read_lease(st, output) is None


def test_lease_of_a_sigkilled_run_is_taken_over_after_it_expires(output):
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from reelflow.curation.lease import WriterLease
            from reelflow.curation.storage import Storage
            WriterLease(Storage(), {output!r}, "doomed-run", ttl_s=1.0, heartbeat_s=0.2).acquire()
            print("held", flush=True)
            time.sleep(60)
        """)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeld, match="doomed-run"):
            WriterLease(Storage(), output, "next-run").acquire()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
    dead = read_lease(Storage(), output)
    assert dead["run_id"] == "doomed-run" and dead["expires"] > time.time()  # left behind, not yet expired
    # Its holder ran on this host and its pid is gone: no need to wait for the expiry.
    lease = WriterLease(Storage(), output, "next-run").acquire()
    try:
        assert read_lease(Storage(), output)["run_id"] == "next-run"
    finally:
        lease.release()


def test_lease_of_a_silent_run_on_another_host_is_taken_over_once_it_expires(output):
    """Another host's process cannot be checked: only the expiry tells that its run is gone."""
    expires = time.time() + 1.0
    doc = {"run_id": "far-run", "host": "other-host", "pid": 1, "token": uuid.uuid4().hex,
           "started": "2026-01-01T00:00:00+00:00", "expires": expires, "expires_iso": "soon"}
    Storage().write_bytes(join(output, "_lease.json"), json.dumps(doc).encode())
    with pytest.raises(LeaseHeld, match="far-run"):
        WriterLease(Storage(), output, "next-run").acquire()
    while True:
        try:
            lease = WriterLease(Storage(), output, "next-run").acquire()
            break
        except LeaseHeld:
            assert time.time() - expires < 5, "an expired lease was never taken over"
            time.sleep(0.1)
    try:
        assert time.time() > expires  # not before it expired
    finally:
        lease.release()


def test_heartbeat_keeps_a_short_lease_alive(output):
    st = Storage()
    with WriterLease(st, output, "long-run", ttl_s=1.0, heartbeat_s=0.2) as lease:
        time.sleep(2.0)
        with pytest.raises(LeaseHeld, match="long-run"):
            WriterLease(st, output, "other-run").acquire()
        assert read_lease(st, output)["expires"] > time.time()
        lease.check()


@pytest.mark.parametrize("state", ["absent", "expired"])
def test_racing_runs_have_exactly_one_winner(output, state):
    if state == "expired":
        write_dead_lease(output)
    n = 8
    start = threading.Barrier(n)
    won: list[WriterLease] = []
    refused: list[LeaseHeld] = []

    def race(i: int) -> None:
        lease = WriterLease(Storage(), output, f"racer-{i}", ttl_s=30, heartbeat_s=0)
        start.wait()
        try:
            won.append(lease.acquire())
        except LeaseHeld as e:
            refused.append(e)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(won) == 1 and len(refused) == n - 1
    assert read_lease(Storage(), output)["token"] == won[0].token
    assert {e.holder["token"] for e in refused} == {won[0].token}
    won[0].release()


def test_holder_finds_out_when_its_lease_was_taken_over(output):
    st = Storage()
    # A stalls past its expiry (no heartbeat), and B takes the lease over.
    a = WriterLease(st, output, "run-A", ttl_s=0.3, heartbeat_s=0).acquire()
    time.sleep(0.4)
    b = WriterLease(st, output, "run-B", ttl_s=30, heartbeat_s=0).acquire()
    with pytest.raises(LeaseLost, match="taken over by run run-B"):
        a.renew()
    assert a.lost
    with pytest.raises(LeaseLost, match="run-B"):
        a.check()
    a.release()  # must not delete B's lease
    assert read_lease(st, output)["token"] == b.token
    b.check()
    b.release()


def test_heartbeat_notices_a_lease_overwritten_under_it(output):
    st = Storage()
    a = WriterLease(st, output, "run-A", ttl_s=5, heartbeat_s=0.05).acquire()
    write_dead_lease(output, run_id="intruder")  # whatever it says, it is no longer A's
    deadline = time.time() + 5
    while not a.lost and time.time() < deadline:
        time.sleep(0.05)
    with pytest.raises(LeaseLost, match="intruder"):
        a.check()
    a.release()
    assert read_lease(st, output)["run_id"] == "intruder"


def test_same_run_in_the_same_process_takes_its_lease_back(output):
    # A Prefect retry of the flow builds a new WriterLease with the same run_id in this process.
    st = Storage()
    old = WriterLease(st, output, "run-A", ttl_s=30, heartbeat_s=0).acquire()
    new = WriterLease(st, output, "run-A", ttl_s=30, heartbeat_s=0).acquire()
    with pytest.raises(LeaseLost):
        old.renew()
    new.check()
    new.release()
    assert read_lease(st, output) is None


def test_partial_or_foreign_lease_file_does_not_block_forever(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "_lease.json").write_text('{"run_id": "trunc')
    with WriterLease(Storage(), str(out), "run-A") as lease:
        assert read_lease(Storage(), str(out))["token"] == lease.token
