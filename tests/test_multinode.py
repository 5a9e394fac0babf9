"""``curate --ray-address`` against a Ray cluster of two nodes (two raylets on this machine):
the stage code travels to the cluster as a runtime_env package, and the media stages' tasks run
on both nodes; with ``runtime.driver_max_rows: 0`` every table takes the workers' path."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reelflow.curation.policy import DEMO_POLICY_FILE

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent


@pytest.fixture
def two_node_cluster():
    proc = subprocess.Popen([sys.executable, str(HERE / "ray_cluster.py"), "2", "1"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        address = proc.stdout.readline().strip()
        assert address, "the cluster did not start"
        yield address
    finally:
        proc.stdin.close()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_curate_runs_its_stages_on_more_than_one_node(two_node_cluster, media, prefect_harness, tmp_path):
    manifest = tmp_path / "manifest.csv"
    videos = [media["cuts"].path, media["bikes"], media["carphone"], media["carphone_distorted"]]
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["uri", "license"])
        w.writeheader()
        w.writerows({"uri": str(v), "license": "CC0-1.0"} for v in videos)
    policy = yaml.safe_load(DEMO_POLICY_FILE.read_text())
    policy["scoring"] = {r: {"score_only": True} for r in ("text", "borders", "jitter", "static", "motion")}
    # Every table through the paths large runs take: the workers read, gate, balance, shard, write
    # the ledger and index, and the dataset gate runs per part (no table is "small" here).
    policy["runtime"] = {**policy.get("runtime", {}), "driver_max_rows": 0}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    env = {**os.environ, "PREFECT_API_URL": prefect_harness, "COLUMNS": "200"}
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "reelflow.flows.cli", "curate", str(manifest), str(out),
                        "--policy", str(tmp_path / "policy.yaml"), "--ray-address", two_node_cluster],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    # The funnel's last column: the Ray nodes whose workers processed each stage's items.
    nodes = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\W*(\w+)\W.*?(\d+|-)\s*\W*$", r.stdout, re.M)
             if m.group(2).isdigit()}
    assert max(nodes.get(s, 0) for s in ("shots", "score", "extract")) == 2, r.stdout
    assert (out / "index.parquet").exists() and list((out / "ledger").glob("part-*.parquet"))
    assert (out / "_stages" / "ingest" / "_FINISHED.json").exists()  # the manifest was judged by the workers
    assert (out / "_stages" / "dedup" / "_FINISHED.json").exists()  # dedup ran on the workers
    assert (out / "_stages" / "balance" / "_FINISHED.json").exists()  # so did balance
    assert (out / "_stages" / "shard" / "_FINISHED.json").exists()  # so did the shard stage
