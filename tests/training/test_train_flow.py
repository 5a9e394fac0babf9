"""The train flow on real engines: a real curated dataset (synthetic shapes, curated once per
session), real Ray Train workers, a real Prefect run, the whole progressive schedule at tiny size,
then the checkpoint sampled with `reelflow generate`."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from typer.testing import CliRunner

from reelflow.flows.cli import app
from reelflow.training.schedule import SCHEDULES_DIR

pytestmark = pytest.mark.integration
runner = CliRunner()


def quick_schedule(path: Path, iterations: int = 6, **top) -> Path:
    """tiny.yaml with few steps per stage (the shape of the schedule is what is under test), and
    without joint_32: text-to-image hands straight to joint 64 px, which grows both the time and
    the space tables in one hand-off (each stage is a Ray Train job with a fixed start-up cost)."""
    raw = yaml.safe_load((SCHEDULES_DIR / "tiny.yaml").read_text())
    raw["stages"] = [st for st in raw["stages"] if st["name"] != "joint_32"]
    for st in raw["stages"]:
        st.update(iterations=iterations, log_every=3, warmup_steps=min(st.get("warmup_steps", 0), 2), val_batches=1,
                  global_batch_size=2)
    raw["eval"] = {"max_prompts": 2, "steps": 2}
    raw.update(top)
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def trained(shapes_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    schedule = quick_schedule(root / "quick.yaml")
    out = root / "run"
    r = runner.invoke(app, ["train", str(shapes_dataset.path), str(out), "--schedule", str(schedule)])
    assert r.exit_code == 0, r.output
    return {"out": out, "schedule": schedule, "output": r.output}


def test_every_stage_trains_gates_and_hands_off(trained):
    out = trained["out"]
    stages = sorted(p.name for p in (out / "stages").iterdir())
    assert stages == ["00_tae", "01_t2i_32", "02_joint_64", "03_audio"]
    for name in stages:
        info = json.loads((out / "stages" / name / "stage.json").read_text())
        assert info["steps"] == 6 and info["final_loss"] is not None and info["val"], name
        assert (out / "stages" / name / "model.pt").is_file()
    metrics = pq.read_table(out / "metrics.parquet").to_pandas()
    metrics = metrics[metrics["split"] != "eval"]  # the evaluation rows carry eval_* metrics, no loss
    assert sorted(metrics["stage"].unique()) == sorted(s[3:] for s in stages)
    assert (metrics.groupby("stage")["step"].max() == 6).all()
    assert metrics["loss"].notna().all() and (metrics["loss"] >= 0).all()
    assert (out / "report.html").stat().st_size > 10_000
    assert "audio" in trained["output"] and "reelflow generate" in trained["output"]

    from reelflow.training.checkpoint import load_checkpoint

    t2i = load_checkpoint(out / "stages" / "01_t2i_32" / "model.pt")
    hi = load_checkpoint(out / "model.pt")
    # T2I: one latent frame; joint: new temporal rows (9 frames -> 3 latents); 64 px: space grown
    # (the 9x16 bucket is 40 px high at 32 px and 88 px at 64 px: 5 -> 11 patch rows)
    assert t2i.video.pos_t.shape[0] == 1 and hi.video.pos_t.shape[0] == 3
    assert (t2i.video.pos_h.shape[0], hi.video.pos_h.shape[0]) == (5, 11)
    assert hi.config.tae.latent_scale != 1.0  # measured on data at the end of the TAE stage
    tae = load_checkpoint(out / "stages" / "00_tae" / "model.pt")
    for a, b in zip(tae.tae.state_dict().values(), hi.tae.state_dict().values()):
        assert torch.equal(a, b)  # later stages keep the TAE frozen
    # Each stage's checkpoint records what it trained on, so it samples at a grid its positions cover.
    assert (t2i.config.sample.frames, t2i.config.sample.height, t2i.config.sample.width) == (1, 24, 40)
    assert (hi.config.sample.frames, hi.config.sample.fps) == (9, 8)
    # trained on FPS-8 captions (curation's FPS-24 rewritten), images on none: generation prepends FPS-8
    assert hi.config.sample.fps_token and not t2i.config.sample.fps_token


def test_every_stage_is_evaluated_and_its_checkpoint_samples(trained, tmp_path):
    out = trained["out"]
    tae = json.loads((out / "stages" / "00_tae" / "eval" / "summary.json").read_text())
    assert tae["tae_psnr"] > 0 and "tae_object_colour" in tae
    assert (out / "stages" / "00_tae" / "eval" / "tae_contact_sheet.png").is_file()
    for name in ("01_t2i_32", "02_joint_64", "03_audio"):  # generators are sampled (the TAE stays frozen)
        summary = json.loads((out / "stages" / name / "eval" / "summary.json").read_text())
        assert {"present", "colour", "direction"} <= set(summary) and "tae_psnr" not in summary, name
        assert (out / "stages" / name / "eval" / "contact_sheet.png").is_file()
    assert json.loads((out / "stages" / "03_audio" / "eval" / "summary.json").read_text())["silence_ok"] is not None
    assert json.loads((out / "stages" / "01_t2i_32" / "eval" / "summary.json").read_text())["direction"] is None
    metrics = pq.read_table(out / "metrics.parquet").to_pandas()
    evals = metrics[metrics["split"] == "eval"]
    assert list(evals["stage"]) == ["tae", "t2i_32", "joint_64", "audio"]
    assert evals["eval_tae_psnr"].notna().tolist() == [True, False, False, False]
    assert "Evaluation" in (out / "report.html").read_text()
    # The 32 px text-to-image stage's own checkpoint samples (it used to ask for the final grid).
    r = runner.invoke(app, ["generate", str(out / "stages" / "01_t2i_32" / "model.pt"), "--prompt",
                            "A red circle", "--out", str(tmp_path / "t2i.mp4"), "--steps", "2"])
    assert r.exit_code == 0, r.output
    assert "1 frames 40x24" in " ".join(r.output.split())


def test_a_stage_below_its_learning_gate_stops_the_schedule(shapes_dataset, tmp_path):
    """An expectation a 3-step TAE cannot meet (every probe object decoded in its colour) stops
    the schedule after that stage with exit 3, naming the metric and the miss; nothing after it
    runs."""
    raw = yaml.safe_load(quick_schedule(tmp_path / "q.yaml", iterations=3).read_text())
    raw["stages"] = raw["stages"][:1]
    raw["stages"][0]["expect"] = {"tae_object_colour": {"min": 0.99}}
    schedule = tmp_path / "gated.yaml"
    schedule.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["train", str(shapes_dataset.path), str(tmp_path / "run"), "--schedule", str(schedule)])
    assert r.exit_code == 3, r.output
    text = " ".join(r.output.split())
    assert "learn-tae" in text and "tae_object_colour" in text and "missed by" in text
    assert not (tmp_path / "run" / "model.pt").exists()


def test_trained_checkpoint_generates_video_with_audio(trained, tmp_path):
    mp4 = tmp_path / "sample.mp4"
    r = runner.invoke(app, ["generate", str(trained["out"] / "model.pt"), "--prompt", "a red circle moves right",
                            "--out", str(mp4), "--seconds", "1", "--steps", "2"])
    assert r.exit_code == 0, r.output
    import av

    with av.open(str(mp4)) as c:
        v = c.streams.video[0]
        # The final stage's most common bucket (16x9) at its 64 px resolution.
        assert (v.codec_context.width, v.codec_context.height) == (88, 48)
        assert c.streams.audio


def test_rerun_skips_finished_stages_and_other_schedules_are_refused(trained, shapes_dataset, tmp_path):
    out = trained["out"]
    before = {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("model.pt")}
    # a run.json written before the eval block had its CLIP fields still resumes (they take defaults)
    run = json.loads((out / "run.json").read_text())
    for key in ("clip_checkpoint", "clip_model", "clip_model_config"):
        assert run["schedule"]["eval"].pop(key, "absent") is None
    (out / "run.json").write_text(json.dumps(run))
    r = runner.invoke(app, ["train", str(shapes_dataset.path), str(out), "--schedule", str(trained["schedule"])])
    assert r.exit_code == 0, r.output
    assert r.output.count("skipped (done)") == 4
    assert before == {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("model.pt")}
    other = quick_schedule(tmp_path / "other.yaml", iterations=7)
    r = runner.invoke(app, ["train", str(shapes_dataset.path), str(out), "--schedule", str(other)])
    assert r.exit_code == 2 and "different schedule" in r.output


def test_too_few_clips_for_a_batch_stops_at_the_data_gate(shapes_dataset, tmp_path):
    sched = quick_schedule(tmp_path / "big.yaml")
    raw = yaml.safe_load(sched.read_text())
    next(st for st in raw["stages"] if st["name"] == "audio")["global_batch_size"] = 64
    sched.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["train", str(shapes_dataset.path), str(tmp_path / "out"), "--schedule", str(sched)])
    assert r.exit_code == 3, r.output
    assert "train-data" in r.output and "audio" in r.output and "needs a batch of 64" in r.output
    assert not (tmp_path / "out" / "stages").exists()


def test_usage_errors(shapes_dataset, tmp_path):
    r = runner.invoke(app, ["train", str(tmp_path), str(tmp_path / "out")])
    assert r.exit_code == 2 and "not a curated dataset" in r.output
    r = runner.invoke(app, ["train", str(shapes_dataset.path), str(tmp_path / "out"), "--schedule", "nope"])
    assert r.exit_code == 2 and "schedule not found" in r.output


def test_a_stages_progress_callback_runs_in_the_context_of_the_flow_that_started_it(tmp_path):
    # The callback logs through Prefect, whose API address and flow run are context variables. Run
    # from a bare thread it saw neither: the first progress line started Prefect's log worker
    # without them, and that worker started a second temporary server, which received the lines.
    import contextvars
    import threading
    import time

    from reelflow.curation.storage import Storage
    from reelflow.training.trainer import _ProgressWatcher

    var = contextvars.ContextVar("var", default="a bare thread's")
    progress = tmp_path / "progress.json"
    progress.write_text(json.dumps({"step": 1}))
    seen: list[tuple[str, str]] = []
    token = var.set("the flow's")
    try:
        with _ProgressWatcher(Storage(), str(progress), lambda row: seen.append(
                (threading.current_thread().name, var.get())), every_s=0.01):
            deadline = time.monotonic() + 10
            while not seen and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        var.reset(token)
    assert seen[0] == ("train-progress", "the flow's")
