"""End to end on real video under real Ray + Prefect: ledger, shards, index, validate, resume,
SIGKILL mid-run, and a poisoned stage table stopped by its gate."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
import yaml
from typer.testing import CliRunner

from reelflow.curation.policy import DEMO_POLICY_FILE
from reelflow.flows.cli import app

pytestmark = pytest.mark.integration
runner = CliRunner()
RUN_ID = "test-run"


@pytest.fixture(scope="module")
def source(media, tmp_path_factory) -> dict:
    """A manifest of real + generated videos, bad inputs and one unlicensed video."""
    root = tmp_path_factory.mktemp("source")
    rows = [
        {"uri": str(media["cuts"].path), "license": "CC0-1.0", "title": "Generated cuts", "description": "Three shots"},
        {"uri": str(media["bikes"]), "license": "BSD-3-Clause", "title": "Bikes", "description": ""},
        {"uri": str(media["carphone"]), "license": "BSD-3-Clause", "title": "Carphone", "description": ""},
        {"uri": str(media["bikes"]) + "#nc", "license": "CC-BY-NC-4.0", "title": "Unlicensed", "description": ""},
    ]
    shutil.copyfile(media["bikes"], root / "nc.mp4")
    rows[-1]["uri"] = str(root / "nc.mp4")
    for kind, p in media["bad"].items():
        rows.append({"uri": str(p), "license": "CC0-1.0", "title": kind, "description": ""})
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["uri", "license", "title", "description"])
        w.writeheader()
        w.writerows(rows)
    policy = yaml.safe_load(DEMO_POLICY_FILE.read_text())
    policy["runtime"] = {"part_rows": 1}  # commit every item: the SIGKILL test needs fine-grained progress
    # Score every clip but reject none: these tests are about the spine (the rules have their own).
    policy["scoring"] = {r: {"score_only": True} for r in ("text", "borders", "jitter", "static", "motion")}
    policy_file = root / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    return {"manifest": manifest, "policy": policy_file, "rows": rows}


def curate(source, out: Path, *extra):
    return runner.invoke(app, ["curate", str(source["manifest"]), str(out), "--policy", str(source["policy"]),
                               "--run-id", RUN_ID, *extra])


@pytest.fixture(scope="module")
def curated(engines, source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("curated") / "out"
    r = curate(source, out)
    assert r.exit_code == 0, r.output
    assert "clips accepted" in r.output
    return out


def read(out: Path, name: str) -> list[dict]:
    return pq.read_table(out / name).to_pylist()


def test_every_input_reaches_exactly_one_terminal_status(curated, source):
    ledger = read(curated, "ledger.parquet")
    videos = {r["source_uri"]: r for r in ledger if r["kind"] == "video"}
    assert len([r for r in ledger if r["kind"] == "video"]) == len(source["rows"])
    assert set(videos) == {r["uri"] for r in source["rows"]}
    assert all(r["status"] in ("accepted", "rejected", "failed") for r in ledger)
    assert len({r["item_id"] for r in ledger}) == len(ledger)
    by_title = {r["title"]: videos[r["uri"]] for r in source["rows"]}
    assert by_title["Generated cuts"]["status"] == "accepted"
    assert by_title["Bikes"]["status"] == "accepted"
    assert by_title["Unlicensed"]["status"] == "rejected" and "not in allowlist" in by_title["Unlicensed"]["reason"]
    assert by_title["empty"]["status"] == "failed" and by_title["empty"]["reason"] == "probe: empty file (0 bytes)"
    assert by_title["not_video"]["status"] == "failed" and "not a readable video" in by_title["not_video"]["reason"]
    assert by_title["truncated"]["status"] == "failed"
    assert by_title["audio_only"]["status"] == "rejected" and "audio-only" in by_title["audio_only"]["reason"]
    clips = [r for r in ledger if r["kind"] == "clip"]
    assert any(r["status"] == "rejected" and r["reason"].startswith("shot_too_short") for r in clips)
    # Every clip hangs off a video in the ledger.
    assert {r["parent_id"] for r in clips} <= {r["item_id"] for r in ledger if r["kind"] == "video"}
    # The sources' analysis frames (the shots stage's one decode) are a work file, gone once judged.
    assert not (curated / "_stages" / "shots" / "analysis").exists()
    assert (curated / "_stages" / "shots").is_dir()


def test_generated_video_is_cut_into_its_shots(curated, media):
    index = read(curated, "index.parquet")
    gen = [r for r in index if r["source_uri"] == str(media["cuts"].path)]
    bounds = [0.0, *media["cuts"].cuts_s, media["cuts"].duration_s]
    assert len(gen) == 3
    for r in gen:  # each clip lies inside exactly one shot
        assert any(a - 1e-3 <= r["start_s"] and r["end_s"] <= b + 1e-3 for a, b in zip(bounds, bounds[1:]))
        assert r["has_audio"]


def test_shards_read_back_with_plain_webdataset_and_match_index(curated):
    index = read(curated, "index.parquet")
    urls = sorted(str(p) for p in (curated / "shards").rglob("*.tar"))
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == sorted(r["key"] for r in index)
    by_key = {r["key"]: r for r in index}
    for s in samples:
        rec = json.loads(s["json"])
        row = by_key[s["__key__"]]
        assert rec["key"] == s["__key__"] and rec["license"] == row["license"] and rec["shard"] == row["shard"]
        assert s["txt"].decode() == row["caption"]
        assert s["mp4"][4:8] == b"ftyp"
        assert ("flac" in s) == bool(row["has_audio"])
        assert s["__url__"].endswith(row["shard"])
    for row in index:  # every clip carries its quality scores and the rules it would break
        assert row["motion_mean"] is not None and row["text_conf_max"] is not None
    assert (curated / "report.html").stat().st_size > 10_000
    summary = json.loads((curated / "dataset.json").read_text())
    assert summary["clips"]["accepted"] == len(index)
    assert abs(summary["seconds"] - sum(r["duration_s"] for r in index)) < 1e-3


def test_validate_passes_then_catches_a_tampered_shard(curated, tmp_path):
    r = runner.invoke(app, ["validate", str(curated)])
    assert r.exit_code == 0, r.output
    bad = tmp_path / "bad"
    shutil.copytree(curated, bad)
    tar_path = sorted((bad / "shards").rglob("*.tar"))[0]
    with tarfile.open(tar_path) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    victim = next(m.name for m, _ in members if m.name.endswith(".txt"))
    with tarfile.open(tar_path, "w") as tf:
        for m, data in members:
            if m.name != victim:
                tf.addfile(m, io.BytesIO(data))
    r = runner.invoke(app, ["validate", str(bad)])
    assert r.exit_code == 3
    assert "has_txt" in r.output and victim.split(".")[0] in r.output


def test_rerun_skips_finished_work_and_yields_the_same_dataset(curated, source, tmp_path):
    again = tmp_path / "again"
    shutil.copytree(curated, again)
    parts_before = sorted(p.name for p in (again / "_stages").rglob("part-*.parquet"))
    shards_before = {p.relative_to(again): p.read_bytes() for p in (again / "shards").rglob("*.tar")}
    r = curate(source, again)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (again / "_stages").rglob("part-*.parquet")) == parts_before
    assert {p.relative_to(again): p.read_bytes() for p in (again / "shards").rglob("*.tar")} == shards_before
    assert read(again, "index.parquet") == read(curated, "index.parquet")


def test_resume_with_another_policy_is_refused(curated, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("video: {min_short_side: 0}\n")
    copy = tmp_path / "copy"
    shutil.copytree(curated, copy)
    src = json.loads((copy / "_stages" / "run.json").read_text())["source"]
    r = runner.invoke(app, ["curate", src, str(copy), "--policy", str(other)])
    assert r.exit_code == 2 and "different policy" in r.output


def test_poisoned_stage_table_stops_the_flow_at_its_gate(curated, source, tmp_path):
    out = tmp_path / "poisoned"
    shutil.copytree(curated, out)
    for stage in ("filter", "shots", "clips", "extract", "shard"):
        shutil.rmtree(out / "_stages" / stage)
    for name in ("index.parquet", "ledger.parquet", "dataset.json"):
        (out / name).unlink()
    shutil.rmtree(out / "shards")
    from reelflow.curation.stage_store import StageStore
    from reelflow.curation.storage import Storage

    probe = StageStore(Storage(), str(out)).read("probe").to_pylist()
    victim = next(r for r in probe if r["status"] == "ok")
    poison = [{**victim, "src_width": -5}]  # a duplicate row with an impossible width
    from reelflow.curation.records import STAGE_SCHEMAS, to_table

    pq.write_table(to_table(poison, STAGE_SCHEMAS["probe"]), out / "_stages" / "probe" / "part-poison.parquet")
    r = curate(source, out)
    assert r.exit_code == 3, r.output
    assert "gate 'probe' failed" in r.output
    assert "expect_column_values_to_be_unique" in r.output and "expect_column_values_to_be_between" in r.output
    assert victim["item_id"] in r.output
    assert not (out / "_stages" / "filter").exists()  # stopped before the next stage


def test_sigkill_mid_run_then_resume_gives_identical_results(curated, source, engines, tmp_path):
    """The killed run is a separate driver on the session's Ray cluster (``--ray-address``, as
    against a real cluster: the stage code travels as a runtime_env package)."""
    out = tmp_path / "killed"
    env = {**os.environ, "PREFECT_API_URL": engines["prefect_api_url"]}
    env.pop("RAY_ADDRESS", None)
    address = engines["ray"].get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "reelflow.flows.cli", "curate", str(source["manifest"]), str(out),
           "--policy", str(source["policy"]), "--run-id", RUN_ID, "--ray-address", address]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    extract_dir = out / "_stages" / "extract"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if extract_dir.exists() and any(extract_dir.glob("part-*.parquet")):
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished (or failed) before it could be killed"
    assert not (out / "index.parquet").exists()
    n_parts = len(list(extract_dir.glob("part-*.parquet")))
    # Judge before encode: only the clips that passed score and dedup reach extract.
    from reelflow.curation.records import ENCODED_STAGES

    total = len([r for r in read(curated, "ledger.parquet") if r["kind"] == "clip" and r["stage"] in ENCODED_STAGES])
    assert 1 <= n_parts < total  # genuinely midway through extraction

    r = curate(source, out)
    assert r.exit_code == 0, r.output
    for name in ("index.parquet", "ledger.parquet"):
        got, want = read(out, name), read(curated, name)
        assert got == want, f"{name} differs in {_differing_columns(got, want)}"
    ref = {p.relative_to(curated): p.read_bytes() for p in (curated / "shards").rglob("*.tar")}
    got = {p.relative_to(out): p.read_bytes() for p in (out / "shards").rglob("*.tar")}
    assert got == ref
    from reelflow.curation.stage_store import StageStore
    from reelflow.curation.storage import Storage

    extract = StageStore(Storage(), str(out)).read("extract").column("item_id").to_pylist()
    assert len(extract) == len(set(extract)) == total  # nothing extracted twice, nothing lost


def _differing_columns(a: list[dict], b: list[dict]) -> list[str]:
    if len(a) != len(b):
        return [f"row count {len(a)} != {len(b)}"]
    return sorted({k for ra, rb in zip(a, b) for k in ra if ra[k] != rb.get(k)})


def test_flow_publishes_funnel_and_summary_artifacts(curated):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        keys = ["curate-funnel", "curate-rules", "curate-summary"]
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    by_key = {a.key: a for a in sorted(arts, key=lambda a: a.created)}  # the newest of each key
    assert set(by_key) == set(keys)
    rules = by_key["curate-rules"].data
    rules = json.loads(rules) if isinstance(rules, str) else rules
    assert [r["rule"] for r in rules][:6] == ["text", "borders", "jitter", "aesthetics", "static", "motion"]
    funnel = by_key["curate-funnel"].data
    funnel = json.loads(funnel) if isinstance(funnel, str) else funnel
    stages = [row["stage"] for row in funnel]
    assert stages == ["ingest", "probe", "filter", "shots", "clips", "score", "dedup", "extract", "caption", "balance",
                      "shard"]
    assert f"run `{RUN_ID}`" in by_key["curate-summary"].data


def test_synthetic_captioned_shapes_flow_through_curate(engines, tmp_path):
    """The models' synthetic CC0 data is an ordinary source: curate keeps it with its captions."""
    from reelflow.training.synthetic_shapes import write_synthetic_dataset

    manifest = write_synthetic_dataset(tmp_path / "shapes", num_clips=2, seed=3, width=320, height=180, fps=24,
                                       seconds=3.0)
    out = tmp_path / "out"
    r = runner.invoke(app, ["curate", str(manifest), str(out), "--policy", str(DEMO_POLICY_FILE)])
    assert r.exit_code == 0, r.output
    index = read(out, "index.parquet")
    assert len(index) == 2 and all(row["license"] == "CC0-1.0" and row["has_audio"] for row in index)
    captions = {row["caption"] for row in index}
    assert all("moving" in c for c in captions)


def test_dataset_gate_by_part_agrees_with_the_whole_table_gate(curated, tmp_path):
    """validate split over the index's and the ledger's parts (what runs beyond
    runtime.driver_max_rows) passes the same output and catches the same tampering."""
    from reelflow.curation.dataset import validate_output
    from reelflow.curation.gates import GateFailed

    assert validate_output(str(curated), at_scale=True) == validate_output(str(curated), at_scale=False)
    bad = tmp_path / "bad"
    shutil.copytree(curated, bad)
    tars = sorted((bad / "shards").rglob("*.tar"))
    with tarfile.open(tars[0]) as tf:  # a sample loses its caption
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    victim = next(m.name for m, _ in members if m.name.endswith(".txt"))
    with tarfile.open(tars[0], "w") as tf:
        for m, data in members:
            if m.name != victim:
                tf.addfile(m, io.BytesIO(data))
    orphan = tars[0].with_name("shard-999999.tar")  # a tar no index row names
    shutil.copyfile(tars[-1], orphan)
    (bad / "ledger.parquet").unlink()  # a ledger row twice (the parts are what large runs read)
    part = sorted((bad / "ledger").glob("part-*.parquet"))[0]
    t = pq.read_table(part)
    pq.write_table(pa.concat_tables([t, t.slice(0, 1)]), part)
    dup = t.column("item_id")[0].as_py()
    messages = {}
    for at_scale in (False, True):
        with pytest.raises(GateFailed) as e:
            validate_output(str(bad), at_scale=at_scale)
        messages[at_scale] = str(e.value)
    for msg in messages.values():
        assert "has_txt" in msg and victim.split(".")[0] in msg
        assert "ledger: expect_column_values_to_be_unique" in msg and dup in msg
    # The orphan tar: its samples sit in a shard the index does not name (read whole), or a tar
    # no index part lists (by part: only the listed tars are read).
    assert "in_index_same_shard" in messages[False]
    assert "unexpected shard file:shards/" in messages[True] and orphan.name in messages[True]
