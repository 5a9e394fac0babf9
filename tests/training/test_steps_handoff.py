"""Stage losses and hand-offs on the tiny models, without Ray or data files."""

from __future__ import annotations

import pytest
import torch

from reelflow.models.audio_model import LogMel
from reelflow.training.checkpoint import build_models
from reelflow.training.handoff import Grid, hand_off_video, model_config, spatial_multiple, stage_grid
from reelflow.training.schedule import load_schedule
from reelflow.training.steps import audio_step, check_audio_span, tae_step, trainable_module, video_step


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return build_models(model_config(load_schedule("tiny")))


def _grads(module: torch.nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_each_stage_trains_only_its_module(models):
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, 9, 32, 40) * 2 - 1
    for kind in ("tae", "video", "audio"):
        for m in (models.tae, models.video, models.text, models.audio):
            m.zero_grad(set_to_none=True)
        module = trainable_module(models, kind)
        if kind == "tae":
            losses = tae_step(module, models, pixels)
            assert set(losses) == {"loss", "recon", "kl", "outlier"}
        elif kind == "video":
            hand_off_video(models, Grid(frames=3, height=4, width=5), fresh=True)
            # the output layer starts at zero (so the first step is the identity): move it off zero,
            # as one optimizer step would, so gradients reach the layers below
            torch.nn.init.normal_(models.video.final.proj.weight, std=0.02)
            module = trainable_module(models, kind)
            losses = video_step(module, models, pixels, ["a red circle", "a blue square"], g)
        else:
            audio = torch.randn(2, 10000) * 0.1
            losses = audio_step(module, models, pixels[:, :, :5], ["a click", "two clicks"], audio,
                                LogMel(models.config.audio), g, fps=8)
        losses["loss"].backward()
        assert torch.isfinite(losses["loss"])
        trained = {"tae": models.tae, "video": models.video, "audio": models.audio}[kind]
        assert _grads(trained), kind
        for other_kind, other in {"tae": models.tae, "video": models.video, "audio": models.audio}.items():
            if other_kind != kind:
                assert not _grads(other), f"{other_kind} got gradients in the {kind} stage"
        if kind == "video":  # the text encoder's own layers learn with the video model; MiniLM stays frozen
            assert _grads(models.text) and not any("backbone" in n for n in _grads(models.text))


def test_video_hand_off_t2i_to_joint_to_high_res(models):
    cfg = models.config
    assert spatial_multiple(cfg) == 8  # 4x TAE x 2x2 patches
    sched = load_schedule("tiny")
    t2i, joint, hi = sched.stages[1], sched.stages[2], sched.stages[3]
    sizes32 = [(24, 40), (40, 24)]  # 16x9 and 9x16 at 32 px
    g1 = stage_grid(cfg, t2i, sizes32)
    assert g1 == Grid(frames=1, height=5, width=5)
    hand_off_video(models, g1, fresh=True)  # text-to-image: one latent frame of positions
    assert models.video.pos_t.shape[0] == 1 and models.video.pos_h.shape[0] == 5
    with torch.no_grad():
        models.video.pos_t.fill_(0.5)
    old_h = models.video.pos_h.detach().clone()
    hand_off_video(models, stage_grid(cfg, joint, sizes32), fresh=False)
    assert models.video.pos_t.shape[0] == 3
    assert torch.equal(models.video.pos_t[0], torch.full_like(models.video.pos_t[0], 0.5))  # kept
    assert not torch.equal(models.video.pos_t[1], models.video.pos_t[0])  # new temporal rows
    assert torch.equal(models.video.pos_h, old_h)  # same resolution: spatial table untouched
    g3 = stage_grid(cfg, hi, [(48, 80), (80, 48)])
    hand_off_video(models, g3, fresh=False)
    assert models.video.pos_h.shape[0] == 10 and models.config.video.max_height == 10
    # interpolated over the same field of view: the mean row is preserved
    assert torch.allclose(models.video.pos_h.mean(0), old_h.mean(0), atol=1e-5)
    out = models.video(torch.randn(1, 8, 3, 10, 6), torch.rand(1), torch.randn(1, 4, 64))
    assert out.shape == (1, 8, 3, 10, 6)


def test_audio_span_must_fit_the_window(models):
    assert check_audio_span(models, 5, 8) == 40
    with pytest.raises(ValueError, match="window is 80"):
        check_audio_span(models, 17, 8)


def test_schedules_that_do_not_fit_the_models_fail_before_training():
    from reelflow.training.handoff import check_schedule_fits
    from reelflow.training.schedule import ScheduleError

    s = load_schedule("tiny")
    check_schedule_fits(s)
    bad = s.model_copy(deep=True)
    bad.stages[2].frames = 8  # not 1 + 4k
    bad.stages[4].frames = 17  # 2.1 s of audio: 134 frames > 80
    with pytest.raises(ScheduleError) as e:
        check_schedule_fits(bad)
    assert "joint_32: frame count must be 1 + 4·k" in str(e.value) and "audio: 17 frames" in str(e.value)


def test_an_audio_stage_shorter_than_the_samples_fails_before_training():
    """The audio model's positions past its training span never train: sampled longer, it made the
    same clicks whatever the video (the demo before tiny.yaml's audio stage took 9 frames)."""
    from reelflow.training.handoff import check_schedule_fits
    from reelflow.training.schedule import ScheduleError

    s = load_schedule("tiny")
    short = s.model_copy(deep=True)
    short.stages[4].frames = 5  # 40 audio frames; joint_64's 9 frames at 8 fps take 71
    with pytest.raises(ScheduleError, match="audio: trains on 40 audio frames .* samples of joint_64 .* take 71"):
        check_schedule_fits(short)
    longer = s.model_copy(deep=True)
    longer.stages[3].frames = 13  # 102 audio frames: a sample takes two windows; the first must be trained whole
    longer.stages[4].frames = 9
    with pytest.raises(ScheduleError, match="take 80"):
        check_schedule_fits(longer)
    longer.stages[4].frames = 13
    with pytest.raises(ScheduleError, match="13 frames at 8"):  # the window itself is too short for it
        check_schedule_fits(longer)


def test_the_latent_cache_encodes_each_fixed_window_sample_once_and_gives_the_same_loss(models):
    from reelflow.training.loop import LatentCache
    from reelflow.training.steps import encode_latents

    pixels = torch.rand(3, 3, 9, 32, 32) * 2 - 1
    calls: list[int] = []

    def encode(x):
        calls.append(x.shape[0])
        return encode_latents(models, x)

    cache = LatentCache(1 << 20)
    first = cache.encode(["a", "b", "c"], pixels, encode)
    again = cache.encode(["c", "a", "d"], pixels[[2, 0, 1]], encode)  # "d" is new (pixels of "b")
    assert calls == [3, 1] and (cache.hits, cache.misses) == (2, 4)
    assert torch.equal(again[0], first[2]) and torch.equal(again[1], first[0]) and torch.allclose(again[2], first[1], atol=1e-5)
    module = trainable_module(models, "video")
    hand_off_video(models, Grid(frames=3, height=8, width=8), fresh=True)
    fresh = video_step(module, models, pixels, ["x"] * 3, torch.Generator().manual_seed(1))
    cached = video_step(module, models, pixels, ["x"] * 3, torch.Generator().manual_seed(1), latents=first)
    assert torch.allclose(fresh["loss"], cached["loss"])
    small = LatentCache(first[0].numel() * first[0].element_size())  # room for one sample
    small.encode(["a", "b"], pixels[:2], encode)
    assert len(small.items) == 1
