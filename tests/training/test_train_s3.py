"""A stage whose OUTPUT is on S3 (moto's server on localhost, spoken to with boto3 and pyarrow):
Ray Train keeps its checkpoints there, the stage's model.pt and metrics land there, and a rerun
reads the stage's completion from there."""

from __future__ import annotations

import boto3
import pytest
import yaml

from reelflow.curation.storage import Storage
from reelflow.training.checkpoint import load_checkpoint
from reelflow.training.schedule import SCHEDULES_DIR, schedule_from_dict
from reelflow.training.trainer import run_stage, stage_metrics

pytestmark = pytest.mark.integration


def test_stage_checkpoints_and_outputs_on_s3(ray_session, s3_server, shapes_dataset, tmp_path):
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="checkpoints")
    raw = yaml.safe_load((SCHEDULES_DIR / "tiny.yaml").read_text())
    t2i = raw["stages"][1]
    t2i.update(iterations=4, log_every=2, checkpoint_every=2, warmup_steps=0, init="scratch", val_batches=1,
               global_batch_size=4)
    raw["stages"] = [t2i]
    schedule = schedule_from_dict(raw)
    output = "s3://checkpoints/runs/exp-1"
    storage = Storage()

    outcome = run_stage(schedule, 0, str(shapes_dataset.path), output)
    assert outcome.steps == 4 and outcome.checkpoint == f"{output}/stages/00_t2i_32/model.pt"
    keys = storage.list(output)
    assert f"{output}/stages/00_t2i_32/stage.json" in keys
    assert any(k.startswith(f"{output}/_ray/00_t2i_32/step_00000004/") for k in keys)  # Ray Train's own checkpoint
    assert [r["step"] for r in stage_metrics(storage, output, schedule, 0)] == [2, 4]
    models = load_checkpoint(storage.localize(outcome.checkpoint, tmp_path))
    assert models.video.pos_t.shape[0] == 1  # a text-to-image stage: one latent frame of positions

    again = run_stage(schedule, 0, str(shapes_dataset.path), output)
    assert again.skipped and again.steps == 4
