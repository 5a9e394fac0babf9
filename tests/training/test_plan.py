"""training/plan.py: the memory and throughput plan of a schedule (`reelflow train --plan`).

(a) parameter counts from the configs equal the built models' numel (tiny, small; moviegen on the
    meta device), and the activation formulas equal what autograd saves, tensor by tensor;
(b) the moviegen plan: DDP cannot fit, and what does (and what it takes) follows from the numbers;
(c) the activation estimate against the peak memory a real CPU training step reaches;
(d) the CLI.

Measuring peak memory on CPU (c): torch has no CPU allocator statistics, and the profiler's memory
events do not add up on this torch. So each configuration runs in a fresh subprocess whose glibc
is told to mmap every allocation >= 64 kB (MALLOC_MMAP_THRESHOLD_, fixed: no dynamic threshold, no
heap reuse), so freeing a tensor returns its pages and the resident set follows the live tensors;
the kernel's high-water mark (VmHWM) is reset through /proc/self/clear_refs right before the step,
after a first step has allocated the gradients and AdamW states. Peak - resident-before-the-step
is then what the step adds: activations (and recompute) on top of the states, as in
training/loop.py, which keeps the previous step's gradients through the forward pass.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARGIN = 0.20  # measured within 2-12% on this machine (docs/training-plan.md); 20% leaves room


# ---------------------------------------------------------------------------------------------
# (a) parameters and saved activations
# ---------------------------------------------------------------------------------------------

def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_analytic_params_equal_built_models(size):
    from reelflow.models.audio_model import AudioTransformer
    from reelflow.models.configs import get_config
    from reelflow.models.tae import TemporalAutoencoder
    from reelflow.models.text_encoder import build_text_encoder
    from reelflow.models.video_transformer import VideoTransformer
    from reelflow.training import plan as P

    c = get_config(size)
    video, audio, tae = VideoTransformer(c.video), AudioTransformer(c.audio), TemporalAutoencoder(c.tae)
    assert P.video_transformer_params(c.video) == (_numel(video), _numel(video.blocks[0]))
    assert P.audio_transformer_params(c.audio) == (_numel(audio), _numel(audio.blocks[0]))
    assert P.tae_params(c.tae) == (_numel(tae), max(_numel(tae.encoder), _numel(tae.decoder)))
    text = build_text_encoder(c.text)  # the MiniLM backbone is local (no network)
    backbone, width = P.backbone_params(P.backbone_config(c.text))
    assert (backbone, width) == (_numel(text.backbone), text.backbone.dim)
    trainable = sum(p.numel() for k, p in text.named_parameters() if not k.startswith("backbone."))
    assert P.text_trainable_params(c.text, width) == trainable


def test_analytic_params_equal_moviegen_on_meta_device():
    """The published sizes, built without memory: 29.36B video, 12.45B audio, 99.5M TAE."""
    import dataclasses

    import torch

    from reelflow.models.audio_model import AudioTransformer
    from reelflow.models.configs import get_config
    from reelflow.models.tae import TemporalAutoencoder
    from reelflow.models.text_encoder import TextEncoder
    from reelflow.models.video_transformer import VideoTransformer
    from reelflow.training import plan as P

    c = get_config("moviegen")
    chars_only = dataclasses.replace(c.text, backbone="none")  # the UL2 backbone is external
    with torch.device("meta"):
        video, audio, tae = VideoTransformer(c.video), AudioTransformer(c.audio), TemporalAutoencoder(c.tae)
        text = TextEncoder(chars_only, None)
    assert P.video_transformer_params(c.video)[0] == _numel(video) == 29_361_438_784
    assert P.audio_transformer_params(c.audio)[0] == _numel(audio) == 12_448_512_128
    assert P.tae_params(c.tae)[0] == _numel(tae)
    assert P.text_trainable_params(chars_only, None) == _numel(text)
    # the assumed UL2-20B encoder (when text_path is not readable): 8.72B
    assert abs(P.backbone_params(P.ASSUMED_BACKBONE)[0] - 8.72e9) < 0.01e9


def _saved_bytes(fn, exclude) -> int:
    """Bytes of the distinct storages autograd saves for backward, other than `exclude`."""
    import torch

    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn()
    skip = {t.untyped_storage()._cdata for t in exclude}
    seen, total = set(), 0
    for t in saved:
        key = t.untyped_storage()._cdata
        if key not in seen and key not in skip:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


@pytest.mark.parametrize("bf16", [False, True])
def test_transformer_activation_formula_equals_saved_tensors(bf16):
    """Per-block formula vs autograd's saved tensors on a 3-block VideoTransformer. bf16: CPU
    autocast (its op list is close to CUDA's for these ops: Linear/SDPA in bf16, RMSNorm in fp32)."""
    import torch

    from reelflow.models.video_transformer import VideoTransformer, VideoTransformerConfig
    from reelflow.training import plan as P

    torch.manual_seed(0)
    cfg = VideoTransformerConfig(latent_channels=8, dim=64, n_layers=3, n_heads=4, ffn_dim=172, text_dim=64,
                                 max_frames=4, max_height=8, max_width=8)
    m = VideoTransformer(cfg)
    b, n_text = 2, 12
    x, t = torch.randn(b, 8, 4, 16, 16), torch.rand(b)
    text, mask = torch.randn(b, n_text, 64), torch.ones(b, n_text, dtype=torch.bool)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step():
        with ctx:
            return (m(x, t, text, mask) - x).pow(2).mean()

    measured = _saved_bytes(step, [*m.parameters(), x, text, mask])
    acts = P.transformer_activations(64, 4, 172, "swiglu", 3, 4 * 8 * 8, n_text, 8 * 4, bf16)
    estimate = b * (acts.peak(0) - acts.work)  # what is saved (the backward buffers come later)
    assert abs(measured / estimate - 1) < 0.03, (measured, estimate)


def test_audio_and_tae_activation_formulas_equal_saved_tensors():
    import torch

    from reelflow.models.audio_model import AudioConfig, AudioTransformer
    from reelflow.models.tae import TAEConfig, TemporalAutoencoder, tae_loss
    from reelflow.training import plan as P

    torch.manual_seed(0)
    b, n_text, n = 2, 12, 70
    a = AudioConfig(sample_rate=16000, n_fft=512, hop_length=256, n_mels=32, dim=64, n_layers=2, n_heads=4,
                    ffn_dim=256, video_dim=24, text_dim=64, window_frames=80)
    am = AudioTransformer(a)
    xa, ca, mk = torch.randn(b, 32, n), torch.randn(b, 32, n), torch.ones(b, 1, n)
    vid, t = torch.randn(b, 10, 24), torch.rand(b)
    text, mask = torch.randn(b, n_text, 64), torch.ones(b, n_text, dtype=torch.bool)
    measured = _saved_bytes(lambda: (am(xa, t, ca, mk, vid, text, mask) - xa).pow(2).mean(),
                            [*am.parameters(), xa, ca, mk, vid, text, mask])
    acts = P.transformer_activations(64, 4, 256, "gelu", 2, n, n_text, 32, False)
    assert abs(measured / (b * (acts.peak(0) - acts.work)) - 1) < 0.03

    for cfg in (TAEConfig(latent_channels=8, base_channels=16, channel_mults=(1, 2, 2), num_res_blocks=1,
                          temporal_downsamples=2, attention=False, norm_groups=1),
                TAEConfig(latent_channels=8, base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=2,
                          temporal_downsamples=2, attention=True, mse_weight=1.0)):
        tae = TemporalAutoencoder(cfg)
        px = torch.randn(b, 3, 9, 32, 32)

        def step(tae=tae, cfg=cfg, px=px):
            recon, mean, logvar = tae(px)
            return tae_loss(px, recon, mean, logvar, cfg)["loss"]

        measured = _saved_bytes(step, [*tae.parameters(), px])
        acts = P.tae_activations(cfg, 9, 32, 32, bf16=False)
        assert abs(measured / (b * (acts.peak(0) - acts.work)) - 1) < 0.01, (cfg, measured)


# ---------------------------------------------------------------------------------------------
# (b) the moviegen plan
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def moviegen_plan():
    from reelflow.training.plan import GB, plan_schedule
    from reelflow.training.schedule import load_schedule

    return plan_schedule(load_schedule("moviegen"), gpu_memory=80 * GB)


def _row(stage_plan, strategy: str, every: int):
    return next(r for r in stage_plan.rows if r.option.strategy == strategy and r.option.every == every)


def test_moviegen_ddp_never_fits(moviegen_plan):
    from reelflow.training.plan import GB

    assert moviegen_plan.gpus == 512 and moviegen_plan.bf16
    by_name = {sp.stage.name: sp for sp in moviegen_plan.stages}
    for name in ("t2i_256", "joint_256", "joint_768", "audio"):
        sp = by_name[name]
        ddp = _row(sp, "ddp", 1)
        states = ddp.memory.params + ddp.memory.grads + ddp.memory.optimizer
        assert states == 16 * sp.params.trained  # fp32 weights + fp32 grads + two fp32 AdamW moments
        assert states > 80 * GB and ddp.fits == "no"
        assert all(r.fits == "no" for r in sp.rows if r.option.strategy == "ddp")
    assert by_name["joint_768"].params.trained > 29e9  # ~470 GB of states for the video stages


def test_moviegen_what_fits_follows_from_the_numbers(moviegen_plan):
    from reelflow.training.plan import GB

    by_name = {sp.stage.name: sp for sp in moviegen_plan.stages}
    usable = moviegen_plan.usable
    # FSDP over 512 GPUs: 16 bytes x 29.5B / 512 < 1 GB of states; HSDP sharding over 8 keeps 59 GB
    t2i = by_name["t2i_256"]
    fsdp = _row(t2i, "fsdp", 1)
    assert fsdp.memory.params + fsdp.memory.grads + fsdp.memory.optimizer < 1 * GB
    hsdp = _row(t2i, "hsdp", 1)
    assert hsdp.option.shard == 8 and hsdp.memory.params + hsdp.memory.grads + hsdp.memory.optimizer > 55 * GB
    # training/loop.py keeps the idle 12.45B audio model (49.8 GB fp32) off the GPUs of a video
    # stage, so FSDP with full checkpointing fits text-to-image at 256 px (18 images a GPU).
    assert "audio" not in t2i.params.frozen and "tae" in t2i.params.frozen
    assert t2i.recommended is not None and t2i.recommended.option.label == "fsdp/512, AC full", t2i.recommended
    assert [r.option.label for r in t2i.rows if r.fits == "yes"] == ["fsdp/512, AC full"]

    # 768 px: 73,920 tokens a video sample. Even with FSDP and full checkpointing one sample's
    # activations exceed the GPU (48 fp32 block inputs of 73,920 x 6144 = 87 GB alone), so no
    # batch size and no strategy reelflow has fits: it needs context parallelism.
    j768 = by_name["joint_768"]
    video = j768.workloads["video"]
    assert video.tokens == 73_920
    one_sample = video.activations.peak(1)
    assert one_sample > 80 * GB
    assert 48 * 73_920 * 6144 * 4 > usable
    assert j768.recommended is None
    assert any("context (sequence) parallelism over >= 4 GPUs" in n for n in j768.needs)
    assert any("1 sample a GPU" in n and "not enough" in n for n in j768.needs)
    # ... and the untiled TAE encode of one 768 px, 249-frame sample is beyond any GPU too
    assert video.encode_bytes > 80 * GB and any("precomputed" in n and "latents" in n for n in j768.needs)

    # audio: 12.45B trained, 390 tokens; the idle 30B video model stays on the host, and what stops
    # the stage is the untiled TAE encode of its latent conditioning
    audio = by_name["audio"]
    assert audio.workloads["video"].tokens == 390
    assert "video" not in audio.params.frozen
    assert any("TAE latents" in n for n in audio.needs)
    assert audio.then is not None and audio.then.option.strategy == "fsdp"


def test_plan_fits_small_schedules_and_reads_memory_strings():
    from reelflow.training.plan import GB, GiB, parse_memory, plan_schedule
    from reelflow.training.schedule import load_schedule

    assert parse_memory("80GB") == 80 * GB and parse_memory("80 GiB") == 80 * GiB
    assert parse_memory("141") == 141 * GB and parse_memory("512MiB") == 512 * 2**20
    for bad in ("", "eighty", "80XB", "-1GB", "0GB"):
        with pytest.raises(ValueError):
            parse_memory(bad)
    plan = plan_schedule(load_schedule("tiny"))
    assert plan.gpus == 1 and not plan.bf16
    for sp in plan.stages:
        assert sp.recommended is not None and sp.recommended.option.label == "ddp, AC off"
        assert sp.flops_per_step > 0
    # checkpointing always lowers the estimate, and costs FLOPs
    for sp in plan.stages:
        assert _row(sp, "ddp", 1).memory.activations < _row(sp, "ddp", 0).memory.activations


# ---------------------------------------------------------------------------------------------
# (c) measured peak memory of a CPU training step
# ---------------------------------------------------------------------------------------------

def _measure(specs: list[dict]) -> list[dict]:
    """Runs this file as a script (below) in a fresh process per call."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "2",
           "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, __file__, json.dumps(specs)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def test_estimate_matches_measured_peak_memory_on_cpu():
    """A VideoTransformer (dim 128, 3 blocks, 4 heads) takes a forward + backward + AdamW step at
    512 and 1024 tokens a sample (4 samples), with and without full activation checkpointing."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to reset the peak RSS")
    from reelflow.training import plan as P

    specs = [dict(frames=f, ac=ac) for f in (2, 4) for ac in (0, 1)]
    results = _measure(specs)
    assert len(results) == 4
    report = []
    for r in results:
        tokens = r["frames"] * 16 * 16
        acts = P.transformer_activations(128, 4, 344, "swiglu", 3, tokens, 16, 64, bf16=False)
        r["estimate"] = 4 * acts.peak(r["ac"])
        # SDPA's math fallback would save 4 x heads x N^2 probabilities: the measurement rules it out
        r["math"] = r["estimate"] + 4 * 3 * 2 * 4 * tokens * tokens * 4
        report.append(f"{tokens} tokens, AC {'full' if r['ac'] else 'off'}: measured {r['peak'] / 1e6:.1f} MB, "
                      f"estimated {r['estimate'] / 1e6:.1f} MB ({r['peak'] / r['estimate'] - 1:+.1%})")
    print("\n" + "\n".join(report))
    for r in results:
        assert abs(r["peak"] / r["estimate"] - 1) <= MARGIN, report
        assert abs(r["peak"] / r["math"] - 1) > MARGIN, report
    off = {r["frames"]: r for r in results if not r["ac"]}
    full = {r["frames"]: r for r in results if r["ac"]}
    for f in (2, 4):
        assert full[f]["peak"] < 0.5 * off[f]["peak"] and full[f]["estimate"] < 0.5 * off[f]["estimate"]
    assert 1.7 < off[4]["peak"] / off[2]["peak"] < 2.3  # activations grow with the tokens


# ---------------------------------------------------------------------------------------------
# (d) the CLI
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def no_engines(monkeypatch):
    """--plan must not start Ray or Prefect."""
    from reelflow.flows import engines

    def refuse(*a, **k):
        raise AssertionError("--plan started the engines")

    monkeypatch.setattr(engines, "start_engines", refuse)


def test_cli_plan_moviegen(no_engines):
    from typer.testing import CliRunner

    from reelflow.flows.cli import app

    r = CliRunner().invoke(app, ["train", "--plan", "moviegen"], env={"COLUMNS": "220"})
    assert r.exit_code == 0, r.output
    for stage in ("tae", "t2i_256", "joint_256", "joint_768", "audio"):
        assert stage in r.output
    assert "does not fit" in r.output
    assert "ddp never fits: 471.8 GB" in r.output
    assert "context (sequence) parallelism" in r.output


def test_cli_plan_tiny_and_options(no_engines):
    from typer.testing import CliRunner

    from reelflow.flows.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["train", "--plan", "tiny", "--gpus", "2", "--gpu-memory", "1GiB"], env={"COLUMNS": "220"})
    assert r.exit_code == 0, r.output
    assert "2 CPU workers of 1.1 GB" in r.output and "joint_64" in r.output and "fits" in r.output
    r = runner.invoke(app, ["train", "--plan", "moviegen", "--gpus", "1536", "--gpu-memory", "141GB",
                            "--text-params", "4.7B"], env={"COLUMNS": "220"})
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args, message", [
    (["--plan", "tiny", "--gpu-memory", "80XB"], "--gpu-memory"),
    (["--plan", "tiny", "--gpu-memory", "lots"], "--gpu-memory"),
    (["--plan", "no-such-schedule"], "schedule not found"),
    (["--plan", "moviegen", "--text-params", "big"], "--text-params"),
    ([], "SHARDS and OUTPUT are required"),
])
def test_cli_plan_bad_input_exits_2(no_engines, args, message):
    from typer.testing import CliRunner

    from reelflow.flows.cli import app

    r = CliRunner().invoke(app, ["train", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output


# ---------------------------------------------------------------------------------------------
# The measuring subprocess for (c)
# ---------------------------------------------------------------------------------------------

def _vm(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _measure_step(frames: int, ac: int) -> dict:
    import gc
    import time

    import torch

    from reelflow.models.video_transformer import VideoTransformer, VideoTransformerConfig
    from reelflow.training.parallel import apply_activation_checkpointing

    torch.manual_seed(0)
    size, batch, text_len, dim = 32, 4, 16, 128
    cfg = VideoTransformerConfig(latent_channels=16, dim=dim, n_layers=3, n_heads=4, ffn_dim=344, text_dim=dim,
                                 max_frames=frames, max_height=size // 2, max_width=size // 2)
    model = VideoTransformer(cfg)
    if ac:
        apply_activation_checkpointing(model, ac)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, t = torch.randn(batch, 16, frames, size, size), torch.rand(batch)
    text, mask = torch.randn(batch, text_len, dim), torch.ones(batch, text_len, dtype=torch.bool)

    def step() -> None:  # training/loop.py's order: forward, zero_grad(set_to_none), backward, step
        loss = (model(x, t, text, mask) - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # allocates the gradients and AdamW's moments
    gc.collect()
    base = _vm("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    step()
    return dict(frames=frames, ac=ac, peak=_vm("VmHWM") - base, seconds=time.perf_counter() - t0)


if __name__ == "__main__":
    import torch

    torch.set_num_threads(2)
    _measure_step(1, 0)  # load the kernels once (their code and buffers are not the step's)
    for spec in json.loads(sys.argv[1]):
        print(json.dumps(_measure_step(**spec)), flush=True)
