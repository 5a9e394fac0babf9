"""No single input stops a run (issue #11), end to end on real Ray + Prefect with generated
hostile files: each ends in the ledger with a clear reason while the run completes with exit 0.

Local source: extreme fps, a 45 degree display matrix, a 16400 px wide frame, too many pixels,
too many frames, too many bytes, a decoder that runs past its timeout, an HLS playlist, a
truncated file, conflicting licence claims in either row order, a uri outside the allowed roots
and one with a password in it. S3 source (through a fault-injecting proxy in front of the S3 API
server): a throttled object and a download cut short are retryable and a resume accepts them; a
truncated object is a permanent failure. Two runs on one OUTPUT: the second is refused, naming the
first; a SIGKILLed holder's lease is taken over. A gate stop reads like one.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import boto3
import hostile_media as hm
import pyarrow.parquet as pq
import pytest
import yaml
from s3_proxy import FaultyS3Proxy
from typer.testing import CliRunner

from reelflow.curation.policy import DEMO_POLICY_FILE
from reelflow.flows.cli import app

pytestmark = pytest.mark.integration
runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
PASSWORD = "hunter2-do-not-log"


def _policy(root: Path, **overrides) -> Path:
    policy = yaml.safe_load(DEMO_POLICY_FILE.read_text())
    # Score every clip but reject none: the rules have their own tests.
    policy["scoring"] = {r: {"score_only": True} for r in ("text", "borders", "jitter", "static", "motion")}
    policy.update(overrides)
    path = root / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


def _write_manifest(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uri", "license"])
        w.writerows(rows)
    return path


def _videos(out: Path) -> dict[str, list[dict]]:
    by: dict[str, list[dict]] = {}
    for r in pq.read_table(out / "ledger.parquet").to_pylist():
        if r["kind"] == "video":
            by.setdefault(Path(r["source_uri"]).name, []).append(r)
    return by


@pytest.fixture(scope="module")
def hostile(media, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hostile")
    src = root / "src"
    src.mkdir()
    good = src / "good.mp4"
    shutil.copyfile(media["cuts"].path, good)
    files = {
        "fps2000.mp4": hm.high_fps_video(src / "fps2000.mp4"),
        "rotated45.mp4": hm.rotated_video(src / "rotated45.mp4"),
        "wide16400.mkv": hm.huge_dimensions_video(src / "wide16400.mkv"),
        "pixels.mkv": hm.huge_dimensions_video(src / "pixels.mkv", width=4000, height=4000, frames=2),
        "frames.mp4": hm.high_fps_video(src / "frames.mp4", fps=200, seconds=20.0, size=(64, 36)),
        "playlist.m3u8": hm.hls_playlist(src / "playlist.m3u8", good),
        "truncated.mp4": hm.truncated_copy(good, src / "truncated.mp4"),
    }
    big = src / "big.mp4"
    big.write_bytes(good.read_bytes() + b"\0" * (49 << 20))  # decodable, but over the byte limit
    for name in ("claims-a.mp4", "claims-b.mp4"):
        shutil.copyfile(good, src / name)
    rows = [(str(good), "CC0-1.0")] + [(str(p), "CC0-1.0") for p in files.values()] + [
        (str(big), "CC0-1.0"),
        # One uri, two licence claims, in either order: every row of it is rejected.
        (str(src / "claims-a.mp4"), "CC-BY-4.0"), (str(src / "claims-a.mp4"), ""),
        (str(src / "claims-b.mp4"), ""), (str(src / "claims-b.mp4"), "CC-BY-4.0"),
        (str(media["bikes"]), "BSD-3-Clause"),  # outside sources.allow
        (f"http://reelflow:{PASSWORD}@127.0.0.1:9/remote.mp4", "CC0-1.0"),
    ]
    manifest = _write_manifest(root / "manifest.csv", rows)
    policy = _policy(root, limits={"max_pixels": 2560 * 1440, "max_frames": 3000, "max_file_bytes": 48 << 20},
                     sources={"allow": [str(src)]})
    return {"manifest": manifest, "policy": policy, "root": root}


@pytest.fixture(scope="module")
def curated(engines, hostile, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile-out") / "out"
    r = runner.invoke(app, ["curate", str(hostile["manifest"]), str(out), "--policy", str(hostile["policy"])])
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.parametrize("name, status, reason", [
    ("fps2000.mp4", "rejected", "probe: fps=2000 outside 1–240"),
    ("rotated45.mp4", "rejected", "probe: rotation=45° is not a multiple of 90°"),
    ("wide16400.mkv", "rejected", "probe: width=16400 outside 1–16384"),
    ("pixels.mkv", "rejected", "probe: pixels=4000x4000=16000000 over limits.max_pixels=3686400"),
    ("frames.mp4", "rejected", "probe: frames~4000 over limits.max_frames=3000"),
    ("big.mp4", "rejected", "over limits.max_file_bytes=50331648"),
    ("playlist.m3u8", "rejected", "probe: an HLS playlist, not a media file"),
    ("truncated.mp4", "failed", "probe: "),
    ("bikes.mp4", "rejected", "source: outside the allowed roots (sources.allow)"),
    ("remote.mp4", "rejected", "source: http:// uris are not read"),
])
def test_each_hostile_input_ends_in_the_ledger_with_its_reason(curated, name, status, reason):
    (row,) = _videos(curated)[name]
    assert row["status"] == status and reason in row["reason"], row
    assert row["retryable"] is (False if status == "failed" else None)


def test_the_rest_of_the_run_completes(curated):
    (good,) = _videos(curated)["good.mp4"]
    assert good["status"] == "accepted"
    index = pq.read_table(curated / "index.parquet").to_pylist()
    assert index and {r["source_uri"].rsplit("/", 1)[1] for r in index} == {"good.mp4"}


def test_conflicting_licence_claims_reject_every_row_whatever_the_order(curated):
    videos = _videos(curated)
    for name in ("claims-a.mp4", "claims-b.mp4"):
        assert [(r["status"], r["reason"]) for r in videos[name]] == \
            [("rejected", "license: conflicting claims (CC-BY-4.0 vs none)")] * 2


def test_a_decoder_that_spins_is_failed_with_a_timeout(engines, tmp_path):
    """A file whose full decode takes many times the item timeout (FFV1 at 1440p: ~20-40 ms a frame,
    300 frames) ends ``failed: timeout after N s`` in the stage that decodes it, not retried, and the
    run exits 0. Its own run: a timeout this short would also cut ordinary work on a busy machine."""
    src = tmp_path / "src"
    spins = hm.slow_decode_video(src / "spins.mkv", frames=300)
    manifest = _write_manifest(tmp_path / "m.csv", [(str(spins), "CC0-1.0")])
    policy = _policy(tmp_path, limits={"item_timeout_s": 1.0})
    out = tmp_path / "out"
    r = runner.invoke(app, ["curate", str(manifest), str(out), "--policy", str(policy)])
    assert r.exit_code == 0, r.output
    (row,) = _videos(out)["spins.mkv"]
    assert (row["status"], row["stage"], row["retryable"]) == ("failed", "shots", False), row
    assert row["reason"] == "shots: timeout after 1 s (item)"


def test_no_password_lands_in_any_output(curated):
    for p in curated.rglob("*"):
        if p.is_file():
            assert PASSWORD.encode() not in p.read_bytes(), p


def test_a_gate_stop_shows_the_gate_not_a_traceback(curated, hostile, engines, tmp_path):
    """A systematic error (here a poisoned stage table) still stops the run at its gate; the user
    sees the gate's message and the failing ids, and the traceback goes to the log file."""
    out = tmp_path / "poisoned"
    shutil.copytree(curated, out)
    for stage in ("filter", "shots", "clips", "score", "dedup", "extract", "caption", "balance", "shard"):
        shutil.rmtree(out / "_stages" / stage, ignore_errors=True)
    from reelflow.curation.records import STAGE_SCHEMAS, to_table
    from reelflow.curation.stage_store import StageStore
    from reelflow.curation.storage import Storage

    victim = next(r for r in StageStore(Storage(), str(out)).read("probe").to_pylist() if r["status"] == "ok")
    pq.write_table(to_table([{**victim, "src_fps": 5000.0}], STAGE_SCHEMAS["probe"]),
                   out / "_stages" / "probe" / "part-poison.parquet")
    env = {**os.environ, "PREFECT_API_URL": engines["prefect_api_url"], "REELFLOW_LOG_DIR": str(tmp_path / "logs")}
    env.pop("RAY_ADDRESS", None)
    address = engines["ray"].get_runtime_context().gcs_address
    proc = subprocess.run([sys.executable, "-m", "reelflow.flows.cli", "curate", str(hostile["manifest"]), str(out),
                           "--policy", str(hostile["policy"]), "--ray-address", address],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3, proc.stderr[-3000:]
    err = proc.stderr
    assert "stopped by a data-quality gate" in err and "gate 'probe' failed" in err and victim["item_id"] in err
    assert "Traceback" not in err, err
    (log,) = (tmp_path / "logs").glob("curate-*.log")
    assert f"full log: {log}" in " ".join(err.split())
    assert "Traceback" in log.read_text() and "GateFailed" in log.read_text()


# -- S3: transient failures are retryable and a resume retries them ----------------------------------
@pytest.fixture
def faulty_s3(s3_server, monkeypatch):
    with FaultyS3Proxy(s3_server) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # botocore's own retries: keep the test short
        yield proxy


def test_throttling_and_cut_downloads_are_retryable_and_a_resume_accepts_them(engines, s3_server, faulty_s3, media,
                                                                              tmp_path, monkeypatch):
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket="hostile-raw")
    # Three different small videos (copies of one would be deduplicated into one).
    from reelflow.training.synthetic_shapes import write_synthetic_dataset

    shapes = write_synthetic_dataset(tmp_path / "shapes", num_clips=1, seed=5, width=160, height=96, fps=24,
                                     seconds=2.5).parent / "clips"
    (shape,) = shapes.glob("*.mp4")
    for name, path in (("good.mp4", media["cuts"].path), ("throttled.mp4", media["carphone"]), ("cut.mp4", shape)):
        client.upload_file(str(path), "hostile-raw", f"v/{name}")
    truncated = hm.truncated_copy(media["cuts"].path, tmp_path / "truncated.mp4")
    client.upload_file(str(truncated), "hostile-raw", "v/truncated.mp4")
    client.put_object(Bucket="hostile-raw", Key="v/manifest.csv",
                      Body=b"uri,license\ngood.mp4,CC0-1.0\nthrottled.mp4,CC0-1.0\ncut.mp4,CC0-1.0\ntruncated.mp4,CC0-1.0\n")
    faulty_s3.throttle("v/throttled.mp4")  # every GET and HEAD: 503 SlowDown
    faulty_s3.truncate("v/cut.mp4")  # every GET: half the body, then the connection closes
    policy = _policy(tmp_path, runtime={"item_retries": 1, "item_retry_backoff_s": 0.1})
    secret = "reelflow-secret-key-sentinel-0123456789"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)  # the driver's; moto accepts any key
    out = tmp_path / "out"
    args = ["curate", "s3://hostile-raw/v", str(out), "--policy", str(policy)]

    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    videos = {k: v[0] for k, v in _videos(out).items()}
    assert videos["good.mp4"]["status"] == "accepted"
    for name in ("throttled.mp4", "cut.mp4"):
        assert videos[name]["status"] == "failed" and videos[name]["retryable"] is True, videos[name]
    assert "SlowDown" in videos["throttled.mp4"]["reason"] or "503" in videos["throttled.mp4"]["reason"]
    assert videos["truncated.mp4"]["status"] == "failed" and videos["truncated.mp4"]["retryable"] is False
    assert "rerun the same command to retry them" in r.output
    assert faulty_s3.counts[("throttle", "v/throttled.mp4")] >= 4  # botocore's and the item's retries
    assert {r["source_uri"].rsplit("/", 1)[1] for r in pq.read_table(out / "index.parquet").to_pylist()} == {"good.mp4"}

    # The endpoint recovers: the same command retries exactly the transient failures.
    faulty_s3.clear()
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    videos = {k: v[0] for k, v in _videos(out).items()}
    assert {n: v["status"] for n, v in videos.items()} == {
        "good.mp4": "accepted", "throttled.mp4": "accepted", "cut.mp4": "accepted", "truncated.mp4": "failed"}
    from reelflow.curation.stage_store import StageStore
    from reelflow.curation.storage import Storage

    for stage in ("probe", "extract"):
        ids = StageStore(Storage(), str(out)).read(stage).column("item_id").to_pylist()
        assert len(ids) == len(set(ids)), f"{stage} holds an item twice"
    index = pq.read_table(out / "index.parquet").to_pylist()
    assert {r["source_uri"].rsplit("/", 1)[1] for r in index} == {"good.mp4", "throttled.mp4", "cut.mp4"}
    for p in out.rglob("*"):
        if p.is_file():
            assert secret.encode() not in p.read_bytes(), p


# -- one live run per OUTPUT ---------------------------------------------------------------------------
def test_a_second_run_on_a_live_output_is_refused_then_takes_over_a_killed_one(engines, media, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(media["cuts"].path, src / "good.mp4")
    manifest = _write_manifest(tmp_path / "m.csv", [(str(src / "good.mp4"), "CC0-1.0")])
    policy = _policy(tmp_path)
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from reelflow.curation.lease import WriterLease
        from reelflow.curation.storage import Storage
        WriterLease(Storage(), {str(out)!r}, "nightly-2026-11-28", ttl_s=60).acquire()
        print("held", flush=True)
        time.sleep(600)
    """)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = runner.invoke(app, ["curate", str(manifest), str(out), "--policy", str(policy)])
        assert r.exit_code == 2, r.output
        text = " ".join(r.output.split())
        assert "is being written by run nightly-2026-11-28" in text and f"pid {holder.pid}" in text
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        holder.stdout.close()
    # The holder was SIGKILLed: its lease is taken over and the run completes.
    r = runner.invoke(app, ["curate", str(manifest), str(out), "--policy", str(policy)])
    assert r.exit_code == 0, r.output
    assert not (out / "_lease.json").exists()  # released at the end
    assert json.loads((out / "dataset.json").read_text())["clips"]["accepted"] >= 1
