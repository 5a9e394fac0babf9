"""A stage on real Ray Train with two data-parallel workers, one of which dies mid-stage: the
worker group is restarted from the latest checkpoint, no step is trained twice or lost, and the
driver follows the stage through its progress rows. Its validation pass is split by aspect bucket,
reduced across both workers."""

from __future__ import annotations

import math

import pytest
import yaml

from curation.storage import Storage
from training.data import ShardDataset, eligible_clips
from training.handoff import model_config
from training.loop import batch_specs
from training.schedule import SCHEDULES_DIR, Schedule, schedule_from_dict
from training.trainer import run_stage, stage_metrics
from training.val_metrics import bucket_losses

pytestmark = pytest.mark.integration


def _seed_holding_out_every_bucket(raw: dict, dataset: str) -> int:
    """A split seed under which every aspect bucket has clips both held out and trained on. Clip
    keys hash the source paths (a new temporary directory each session), so the split is drawn
    anew each session: seed 0 may well hold out no portrait clip."""
    data = ShardDataset(dataset)
    buckets = {c.bucket for c in data.clips.values()}
    for seed in range(50):
        schedule: Schedule = schedule_from_dict({**raw, "seed": seed})
        stage = schedule.stages[0]
        specs = [batch_specs(schedule, stage, model_config(schedule), split)["video"] for split in ("val", "train")]
        if all({c.bucket for c in eligible_clips(data.clips.values(), spec)} == buckets for spec in specs):
            return seed
    raise AssertionError(f"no seed holds out a clip of every bucket {sorted(buckets)}")


def test_two_workers_survive_a_worker_failure_and_resume_from_the_checkpoint(ray_session, shapes_dataset, tmp_path):
    raw = yaml.safe_load((SCHEDULES_DIR / "tiny.yaml").read_text())
    tae = raw["stages"][0]
    # val_batches covers the whole (small) held-out split, so each bucket's loss is measured
    tae.update(iterations=8, log_every=2, checkpoint_every=2, val_batches=8, global_batch_size=2)
    raw.update(stages=[tae], num_workers=2, max_failures=1)
    raw["seed"] = _seed_holding_out_every_bucket(raw, str(shapes_dataset.path))
    schedule = schedule_from_dict(raw)
    marker = tmp_path / "fault"
    seen: list[dict] = []
    outcome = run_stage(schedule, 0, str(shapes_dataset.path), str(tmp_path / "out"), on_progress=seen.append,
                        faults=[{"step": 5, "marker": str(marker)}])
    assert marker.exists()  # the fault happened, and the stage still finished
    assert outcome.steps == 8 and not outcome.skipped
    rows = stage_metrics(Storage(), str(tmp_path / "out"), schedule, 0)
    # steps 5-6 were redone from the step-4 checkpoint; each step is logged exactly once
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    assert [r["samples"] for r in rows] == [4, 8, 12, 16]  # 1 sample per worker per step, 2 workers
    assert rows[-1]["recon"] < rows[0]["recon"]  # the autoencoder is learning
    assert "val_loss_video" in rows[-1]
    # Per aspect bucket, reduced over both workers (each holds only some of the held-out batches):
    # every bucket measured, finite, and the pooled loss is their sample-weighted mean.
    for kind in ("image", "video"):  # the TAE trains on both (joint)
        per_bucket = bucket_losses(rows[-1], kind)
        assert set(per_bucket) == {"16x9", "9x16"}, rows[-1]
        assert all(math.isfinite(loss) and loss >= 0 and n >= 1 for loss, n in per_bucket.values())
        pooled = sum(loss * n for loss, n in per_bucket.values()) / sum(n for _, n in per_bucket.values())
        assert pooled == pytest.approx(rows[-1][f"val_loss_{kind}"], rel=1e-9)
        held_out = {b: 0 for b in per_bucket}
        spec = batch_specs(schedule, schedule.stages[0], model_config(schedule), "val")[kind]
        for c in eligible_clips(ShardDataset(str(shapes_dataset.path)).clips.values(), spec):
            held_out[c.bucket] += 1
        assert {b: n for b, (_, n) in per_bucket.items()} == held_out  # each held-out clip counted once
    assert seen and seen[-1]["step"] == 8  # the driver saw the stage's progress
