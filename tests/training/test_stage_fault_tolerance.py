"""A stage on real Ray Train with two data-parallel workers, one of which dies mid-stage: the
worker group is restarted from the latest checkpoint, no step is trained twice or lost, and the
driver follows the stage through its progress rows."""

from __future__ import annotations

import pytest
import yaml

from curation.storage import Storage
from training.schedule import SCHEDULES_DIR, schedule_from_dict
from training.trainer import run_stage, stage_metrics

pytestmark = pytest.mark.integration


def test_two_workers_survive_a_worker_failure_and_resume_from_the_checkpoint(ray_session, shapes_dataset, tmp_path):
    raw = yaml.safe_load((SCHEDULES_DIR / "tiny.yaml").read_text())
    tae = raw["stages"][0]
    tae.update(iterations=8, log_every=2, checkpoint_every=2, val_batches=1, global_batch_size=2)
    raw.update(stages=[tae], num_workers=2, max_failures=1)
    schedule = schedule_from_dict(raw)
    marker = tmp_path / "fault"
    seen: list[dict] = []
    outcome = run_stage(schedule, 0, str(shapes_dataset.path), str(tmp_path / "out"), on_progress=seen.append,
                        fault_at_step=5, fault_marker=str(marker))
    assert marker.exists()  # the fault happened, and the stage still finished
    assert outcome.steps == 8 and not outcome.skipped
    rows = stage_metrics(Storage(), str(tmp_path / "out"), schedule, 0)
    # steps 5-6 were redone from the step-4 checkpoint; each step is logged exactly once
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    assert [r["samples"] for r in rows] == [4, 8, 12, 16]  # 1 sample per worker per step, 2 workers
    assert rows[-1]["recon"] < rows[0]["recon"]  # the autoencoder is learning
    assert "val_loss_video" in rows[-1]
    assert seen and seen[-1]["step"] == 8  # the driver saw the stage's progress
