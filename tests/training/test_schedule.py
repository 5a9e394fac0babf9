"""Schedules as config: bundled YAMLs load, mistakes are clear errors, the lr schedule is right."""

from __future__ import annotations

import pytest
import yaml

from reelflow.training.schedule import SCHEDULES_DIR, ScheduleError, load_schedule, schedule_from_dict


def test_bundled_schedules_follow_movie_gens_progression():
    for name in ("tiny", "moviegen"):
        s = load_schedule(name)
        kinds = [(st.model, st.data) for st in s.stages]
        # TAE first, then text-to-image, joint low-res, joint high-res, then audio (Movie Gen)
        assert kinds == [("tae", "joint"), ("video", "image"), ("video", "joint"), ("video", "joint"),
                         ("audio", "video")]
        res = [st.resolution for st in s.stages if st.model == "video"]
        assert res[0] == res[1] < res[2]
        assert s.stages[0].init == "scratch" and all(st.init == "previous" for st in s.stages[1:])
    mg = load_schedule("moviegen")
    t2i, j256, j768 = mg.stages[1:4]
    assert (t2i.global_batch_size, t2i.lr, t2i.iterations) == (9216, 1e-4, 210_000)  # Movie Gen
    assert (j256.lr, j256.iterations) == (6e-5, 185_000)
    assert (j768.resolution, j768.lr, j768.final_lr, j768.iterations) == (768, 6e-5, 1e-5, 74_500)
    assert mg.precision == "bf16" and mg.use_gpu


def test_lr_warmup_then_cosine_to_final():
    s = load_schedule("tiny")
    st = s.stages[3].model_copy(update={"warmup_steps": 4, "iterations": 20, "lr": 1e-3, "final_lr": 1e-4})
    assert st.lr_at(0) == pytest.approx(2.5e-4) and st.lr_at(3) == pytest.approx(1e-3)
    assert st.lr_at(4) == pytest.approx(1e-3)
    assert st.lr_at(20) == pytest.approx(1e-4)
    lrs = [st.lr_at(i) for i in range(4, 21)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    const = s.stages[1]
    assert const.final_lr is None and const.lr_at(const.iterations - 1) == const.lr


def _tiny_raw() -> dict:
    return yaml.safe_load((SCHEDULES_DIR / "tiny.yaml").read_text())


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["stages"][0].update(init="previous"), "no previous stage"),
    (lambda r: r["stages"][1].update(name="tae"), "duplicate stage names"),
    (lambda r: r["stages"][1].update(frames=9), "image stage has frames: 1"),
    (lambda r: r["stages"][2].update(image_ratio=0), "joint stage needs 0 < image_ratio < 1"),
    (lambda r: r["stages"][4].update(data="joint", image_ratio=0.5), "audio model trains on video"),
    (lambda r: r.update(num_workers=3), "not divisible by num_workers"),
    (lambda r: r["stages"][1].update(lr_typo=1), "lr_typo"),
    (lambda r: r["stages"][1].update(name="a/b"), "becomes a directory"),
    (lambda r: r.update(with_audio=False), "with_audio is false"),
    # a CLIP score gate needs a CLIP model to measure it; half a CLIP configuration is not silently off
    (lambda r: r["stages"][1].update(expect={"clip_score": {"min": 0.2}}), "expect clip_score, which needs eval.clip_checkpoint"),
    (lambda r: r["eval"].update(clip_checkpoint="clip.pt", enabled=False) or r["stages"][1].update(
        expect={"clip_score": {"min": 0.2}}), "needs eval.clip_checkpoint"),
    (lambda r: r["eval"].update(clip_model="ViT-B-32"), "clip_checkpoint is not"),
])
def test_bad_schedules_are_clear_errors(mutate, message):
    raw = _tiny_raw()
    mutate(raw)
    with pytest.raises(ScheduleError, match=message):
        schedule_from_dict(raw)


def test_a_clip_score_gate_with_a_clip_checkpoint_is_valid():
    raw = _tiny_raw()
    raw["eval"].update(clip_checkpoint="s3://models/clip.pt", clip_model="ViT-B-32")
    raw["stages"][1]["expect"] = {"clip_score": {"min": 0.2}}
    s = schedule_from_dict(raw)
    assert (s.eval.clip_checkpoint, s.eval.clip_model, s.eval.clip_model_config) == ("s3://models/clip.pt", "ViT-B-32", None)
    assert load_schedule("tiny").eval.clip_checkpoint is None  # off unless configured


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ScheduleError, match="bundled: \\['moviegen', 'tiny'\\]"):
        load_schedule("nope")
    bad = tmp_path / "s.yaml"
    bad.write_text("stages: [\n")
    with pytest.raises(ScheduleError, match="not valid YAML"):
        load_schedule(bad)
