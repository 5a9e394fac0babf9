"""One real curated dataset of synthetic shapes (landscape and portrait clips), made once per session
with the real `reelflow curate` CLI, for the training data-loader tests."""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from reelflow.curation.policy import DEMO_POLICY_FILE


@dataclass(frozen=True)
class CuratedShapes:
    path: Path  # the curated OUTPUT directory (index.parquet, shards/)
    keys: list[str]  # every clip key in the index
    buckets: dict[str, list[str]]  # aspect bucket -> keys
    curate_s: float  # how long curate took


def _concat_manifests(manifests: list[Path], out: Path) -> Path:
    rows: list[dict] = []
    for m in manifests:
        with m.open(newline="") as f:
            rows.extend(csv.DictReader(f))
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


@pytest.fixture(scope="session")
def shapes_dataset(engines, tmp_path_factory) -> CuratedShapes:
    """8 landscape (320x180) and 3 portrait (180x320) synthetic 3 s clips with audio, curated with
    the demo policy (motion rules score-only): two aspect buckets (16x9, 9x16), two shards, 48 kHz
    FLAC audio. Takes about 1.5 min (Ray + Prefect start-up included)."""
    from reelflow.flows.cli import app
    from reelflow.training.synthetic_shapes import write_synthetic_dataset

    root = tmp_path_factory.mktemp("shapes")
    land = write_synthetic_dataset(root / "landscape", num_clips=8, seed=11, width=320, height=180, fps=24,
                                   seconds=3.0)
    port = write_synthetic_dataset(root / "portrait", num_clips=3, seed=12, width=180, height=320, fps=24,
                                   seconds=3.0)
    manifest = _concat_manifests([land, port], root / "manifest.csv")
    policy = yaml.safe_load(DEMO_POLICY_FILE.read_text())
    # Small slow shapes score just under the motion floor (mean 0.39-0.5 < 0.5): keep every clip,
    # these tests are about reading shards, not about the rules.
    policy["scoring"] = {"motion": {"score_only": True}, "static": {"score_only": True}}
    policy_file = root / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    out = root / "out"
    t0 = time.monotonic()
    r = CliRunner().invoke(app, ["curate", str(manifest), str(out), "--policy", str(policy_file)])
    took = time.monotonic() - t0
    assert r.exit_code == 0, r.output
    index = pq.read_table(out / "index.parquet").to_pylist()
    assert len(index) >= 8, f"only {len(index)} of 11 synthetic clips survived curation"
    buckets: dict[str, list[str]] = {}
    for row in index:
        buckets.setdefault(row["aspect_bucket"], []).append(row["key"])
    assert {"16x9", "9x16"} <= set(buckets), buckets
    return CuratedShapes(out, [row["key"] for row in index], buckets, took)
