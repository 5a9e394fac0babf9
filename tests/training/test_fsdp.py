"""FSDP2 on real Ray Train (2 CPU workers, gloo): a video stage sharded per transformer block
trains the same losses as DDP, survives a worker killed mid-stage (SIGKILL) by resuming from its
sharded checkpoint, and a stage stopped at 2 workers continues at 1 and again at 2 — one step
count, one data plan, every step logged once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from reelflow.curation.storage import Storage
from reelflow.training.checkpoint import load_checkpoint
from reelflow.training.schedule import SCHEDULES_DIR, schedule_from_dict
from reelflow.training.trainer import run_stage, stage_metrics

pytestmark = pytest.mark.integration

# Losses of FSDP against DDP: the same arithmetic, but gradients are reduce-scattered instead of
# all-reduced (another summation order), and 8 AdamW steps amplify the last-bit differences.
LOSS_RTOL = 1e-3


def _uneven_validation_seed(raw: dict, dataset: str) -> int:
    """A split seed under which the held-out video batches are odd in number: one worker validates
    one batch more than the other (under FSDP a forward is a collective; under DDP too, through its
    buffer broadcast: an uneven pass once hung both)."""
    from reelflow.training.data import ShardDataset, eligible_clips
    from reelflow.training.handoff import model_config
    from reelflow.training.loop import batch_specs

    data = ShardDataset(dataset)
    for seed in range(50):
        schedule = schedule_from_dict({**raw, "seed": seed})
        spec = batch_specs(schedule, schedule.stages[0], model_config(schedule), "val")["video"]
        n = len(eligible_clips(data.clips.values(), spec))
        if n and -(-n // spec.batch_size) % 2 == 1:
            return seed
    raise AssertionError("no seed gives an odd number of held-out batches")


def _video_schedule(num_workers: int, strategy: str, iterations: int, **parallelism) -> dict:
    """tiny.yaml's joint 32 px video stage, from scratch, small: the transformer's two blocks are
    the FSDP units, the text encoder's trainable parts sit in the root unit."""
    raw = yaml.safe_load((SCHEDULES_DIR / "tiny.yaml").read_text())
    stage = next(s for s in raw["stages"] if s["name"] == "joint_32")
    stage.update(init="scratch", iterations=iterations, log_every=2, checkpoint_every=2, val_batches=16,
                 global_batch_size=4, warmup_steps=0, parallelism={"strategy": strategy, **parallelism})
    raw.update(stages=[stage], num_workers=num_workers, max_failures=1, buckets=["16x9"])
    raw["eval"] = {"enabled": False}
    return raw


def _rows(out: Path, raw: dict) -> list[dict]:
    return [r for r in stage_metrics(Storage(), str(out), schedule_from_dict(raw), 0) if r["split"] == "train"]


def test_fsdp_trains_the_losses_ddp_does_and_survives_a_killed_worker(ray_session, shapes_dataset, tmp_path):
    dataset = str(shapes_dataset.path)
    seed = _uneven_validation_seed(_video_schedule(2, "ddp", 8), dataset)
    ddp_raw = {**_video_schedule(2, "ddp", 8), "seed": seed}
    run_stage(schedule_from_dict(ddp_raw), 0, dataset, str(tmp_path / "ddp"))
    fsdp_raw = {**_video_schedule(2, "fsdp", 8, activation_checkpointing="full"), "seed": seed}
    marker = tmp_path / "killed"
    # Rank 1's process dies at step 5 (between the step-4 checkpoint and the next): Ray Train restarts
    # the worker group, every rank loads its shard of the step-4 state, steps 5-8 run again.
    seen: list[dict] = []
    outcome = run_stage(schedule_from_dict(fsdp_raw), 0, dataset, str(tmp_path / "fsdp"), on_progress=seen.append,
                        faults=[{"step": 5, "marker": str(marker), "kill": True, "rank": 1}])
    assert marker.exists() and outcome.steps == 8
    assert seen and seen[-1]["step"] == 8  # the driver followed the stage through its progress rows
    ddp, fsdp = _rows(tmp_path / "ddp", ddp_raw), _rows(tmp_path / "fsdp", fsdp_raw)
    # steps 5-6 were redone from the step-4 checkpoint; each step is logged exactly once
    assert [r["step"] for r in fsdp] == [r["step"] for r in ddp] == [2, 4, 6, 8]
    assert [r["samples"] for r in fsdp] == [8, 16, 24, 32]
    for a, b in zip(ddp, fsdp):
        assert b["loss"] == pytest.approx(a["loss"], rel=LOSS_RTOL), (a, b)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=LOSS_RTOL)
    # the uneven validation pass ran on both and agrees (each held-out batch counted once)
    assert fsdp[-1]["val_loss_video"] == pytest.approx(ddp[-1]["val_loss_video"], rel=LOSS_RTOL)
    # The stage's model.pt is whole (gathered from the shards) and equal to DDP's within the tolerance.
    m_ddp = load_checkpoint(tmp_path / "ddp" / "stages" / "00_joint_32" / "model.pt")
    m_fsdp = load_checkpoint(tmp_path / "fsdp" / "stages" / "00_joint_32" / "model.pt")
    for (name, a), b in zip(m_ddp.video.state_dict().items(), m_fsdp.video.state_dict().values()):
        assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-3, atol=1e-5), name


def _latest_loop_state(out: Path) -> dict:
    states = [json.loads(p.read_text()) for p in (out / "_ray").rglob("loop.json")]
    return max(states, key=lambda s: s["step"])


def test_a_sharded_stage_resumes_at_another_worker_count(ray_session, shapes_dataset, tmp_path):
    """2 workers -> stop -> 1 worker -> stop -> 2 workers: DCP reshards the saved state to the new
    mesh; the run keeps its step count, sample count and place in the data plan."""
    dataset, out = str(shapes_dataset.path), tmp_path / "run"
    two = {**_video_schedule(2, "fsdp", 6), "max_failures": 0}
    one = {**_video_schedule(1, "fsdp", 6), "max_failures": 0}
    with pytest.raises(Exception, match="injected fault"):
        run_stage(schedule_from_dict(two), 0, dataset, str(out), faults=[{"step": 3, "marker": str(tmp_path / "a")}])
    at_two = _latest_loop_state(out)
    assert (at_two["step"], at_two["world_size"], at_two["samples"]) == (2, 2, 8)
    with pytest.raises(Exception, match="injected fault"):
        run_stage(schedule_from_dict(one), 0, dataset, str(out), faults=[{"step": 5, "marker": str(tmp_path / "b")}])
    at_one = _latest_loop_state(out)
    assert (at_one["step"], at_one["world_size"], at_one["samples"]) == (4, 1, 16)
    outcome = run_stage(schedule_from_dict(two), 0, dataset, str(out))
    assert outcome.steps == 6 and outcome.resumed
    rows = _rows(out, two)
    assert [r["step"] for r in rows] == [2, 4, 6]  # each step trained and logged once
    assert [r["samples"] for r in rows] == [8, 16, 24]
    final = _latest_loop_state(out)
    # one planned batch per step, of one kind or the other: none skipped, none repeated
    assert sum(final["consumed"].values()) == 6 and final["world_size"] == 2
    assert all(r["loss"] == r["loss"] and r["loss"] > 0 for r in rows)  # finite
    load_checkpoint(out / "stages" / "00_joint_32" / "model.pt")
