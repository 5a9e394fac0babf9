"""The `small` config on one GPU in a few minutes: throughput and MFU of the video and TAE stages
(bf16 autocast vs fp32), and a time-boxed learning curve on synthetic shapes with the shapes probe.

    PYTHONUNBUFFERED=1 python3 bench/gpu_small.py --out $OUT --minilm .gpu_carry/minilm --budget-s 420
    .venv/bin/python bench/gpu_small.py --smoke --out /tmp/gpu_smoke      # CPU, tiny config, ~1-2 min

Needs only torch, numpy, scipy, tokenizers, safetensors, pyyaml (+ matplotlib for samples.png): no Ray, PyAV,
pydantic or the MiniLM package (`bench/make_gpu_carry.py` writes the fp16 backbone for --minilm).
Phases run against absolute deadlines (fractions of --budget-s), so time one phase leaves unused
goes to the next, and each is guarded: an error is recorded in gpu_small.json and the run goes on.
Writes OUT/gpu_small.json, OUT/gpu_small.md and OUT/samples.png.
"""

from __future__ import annotations

import time

T0 = time.time()  # the budget counts from process start, imports included

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
import checkout  # noqa: E402,F401  (reelflow from this checkout when it is not installed)

from reelflow.models.configs import ModelConfig, get_config  # noqa: E402
from reelflow.models.flow_matching import euler_sample, flow_matching_loss, guided_velocity, resolution_shift  # noqa: E402
from reelflow.models.text_encoder import TextEncoder, load_backbone  # noqa: E402
from reelflow.models.video_transformer import VideoTransformer, count_params  # noqa: E402
from reelflow.training.checkpoint import build_models  # noqa: E402
from reelflow.training.eval import PromptSpec, probe_prompts, summarize  # noqa: E402
from reelflow.training.shape_metrics import judge, measure  # noqa: E402
from reelflow.training.steps import encode_latents, tae_step, trainable_module, video_step  # noqa: E402
from reelflow.training.synthetic_shapes import ShapeClip, random_clip, render_clip  # noqa: E402

try:  # the sampler's prompt rule (FPS token) where this checkout has it; else the same rule inline
    from reelflow.training.captions import with_rate
except ImportError:  # pragma: no cover
    def with_rate(prompt: str, fps: float) -> str:
        return prompt if prompt.startswith("FPS-") else f"FPS-{max(1, round(fps))} {prompt}"

# Dense bf16 datasheet peaks, first match on the device name wins (PCIe/NVL parts are clocked lower).
SPEC_BF16_TFLOPS = {"H200 NVL": 836.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H200": 989.0, "H100": 989.0,
                    "A100": 312.0}
# Cumulative deadlines as fractions of the budget; the rest is for writing the outputs.
DEADLINES = {"tp_video": 0.17, "tp_tae": 0.23, "compile": 0.37, "tae": 0.57, "video": 0.95}
SHAPES_SIZE, SHAPES_LEAD_IN = (0.2, 0.35), 0.15  # the demo's shapes (flows/cli.py: _add_synthetic_shapes)


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def amp(device: torch.device, bf16: bool):
    """training/loop.py `_autocast`: bf16 autocast on CUDA only (a CPU run stays fp32)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda" else contextlib.nullcontext()


@contextlib.contextmanager
def matmul_precision(mode: str):
    """'highest' = true fp32 matmuls (torch's default), 'high' = TF32 (cuDNN convs use TF32 either way)."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(mode)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def step_generator(seed: int, step: int) -> torch.Generator:
    """training/loop.py `step_generator` (rank 0): a CPU generator drives each step's noise."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))


def make_optimizer(module: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """StageRunner.make_optimizer: AdamW (0.9, 0.95), no decay on norms/biases/gains."""
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def train_step(module, optimizer, loss_fn, device: torch.device, bf16: bool, clip: float | None) -> dict:
    """One step exactly as run_stage_loop does it, host syncs included (isfinite, clip, .item())."""
    with amp(device, bf16):
        losses = loss_fn()
    loss = losses["loss"]
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(module.parameters(), clip)) if clip else None
    optimizer.step()
    return {**{k: float(v.detach()) for k, v in losses.items()}, "grad_norm": grad_norm}


def to_pixels(frames: torch.Tensor) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) float in [-1, 1], as training/data.py decodes."""
    return frames.permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)


def schedule_hparams(size: str) -> dict:
    """Learning rates, batches, warm-up from the bundled schedule for `size` (else tiny.yaml), read as
    plain YAML: training/schedule.py needs pydantic, which the GPU machine lacks."""
    sdir = ROOT / "training" / "schedules"
    name = size if (sdir / f"{size}.yaml").exists() else "tiny"
    raw = yaml.safe_load((sdir / f"{name}.yaml").read_text())
    stages = raw["stages"]
    tae = next(s for s in stages if s["model"] == "tae")
    videos = [s for s in stages if s["model"] == "video"]
    vid = next((s for s in videos if s["data"] in ("video", "joint")), videos[0])
    own = get_config(raw.get("model_size", name), with_audio=False)
    return {"schedule": f"{name}.yaml", "tae_lr": tae["lr"], "tae_batch": tae["global_batch_size"],
            "tae_image_ratio": tae.get("image_ratio", 0.0), "tae_wd": tae.get("weight_decay", 0.0),
            "tae_clip": tae.get("grad_clip", 1.0), "tae_latents": own.tae.latent_frames(tae.get("frames", 1)),
            "tae_res_ratio": tae["resolution"] / max(s["resolution"] for s in videos),
            "video_lr": vid["lr"], "video_batch": vid["global_batch_size"], "video_wd": vid.get("weight_decay", 0.0),
            "video_clip": vid.get("grad_clip", 1.0), "video_warmup": videos[0].get("warmup_steps", 0)}


def md_table(rows: list[dict], cols: list[str]) -> str:
    def cell(v) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- environment
def phase_env(device: torch.device, smoke: bool) -> dict:
    info = {"torch": torch.__version__, "device": str(device), "python": sys.version.split()[0],
            "tf32_matmul": torch.get_float32_matmul_precision(), "cudnn_tf32": torch.backends.cudnn.allow_tf32}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(name=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    memory_gb=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
        n, dtype = 8192, torch.bfloat16
    else:
        info["name"] = "cpu"
        n, dtype = (512 if smoke else 2048), torch.float32  # bf16 matmuls on CPU say nothing about a GPU
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
    info["matmul"] = f"{n}^3 {str(dtype).replace('torch.', '')}"
    info["matmul_tflops"] = 2 * n**3 / float(np.mean(times)) / 1e12
    info["spec_bf16_tflops"] = next((v for k, v in SPEC_BF16_TFLOPS.items() if k in info["name"]), None)
    return info


# ---------------------------------------------------------------- throughput + MFU
@dataclass
class TputRow:
    stage: str
    precision: str  # bf16 (autocast; CUDA only), fp32 (TF32 off), tf32
    frames: int
    latent_frames: int
    batch: int
    tokens: int | None = None  # video tokens per sample
    step_ms: float | None = None
    samples_s: float | None = None
    tokens_s: float | None = None
    tflop_step: float | None = None  # fwd+bwd, FlopCounterMode
    tflops: float | None = None
    mfu_spec: float | None = None
    mfu_meas: float | None = None  # against the measured bf16 matmul peak
    mem_gb: float | None = None
    noise_ms: float | None = None  # CPU randn of the step's noise (video_step draws it on a CPU generator)
    steps: int = 0
    error: str | None = None


def measure_step(row: TputRow, step, device: torch.device, env: dict, deadline: float, smoke: bool) -> TputRow:
    from torch.utils.flop_counter import FlopCounterMode

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(1 if smoke else 3):  # warm-up: allocator, cuDNN/SDPA kernel choice, prompt feature cache
        step()
    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    sync(device)
    t, n = time.perf_counter(), 0
    while n < (2 if smoke else 5) or (time.perf_counter() - t < 1.0 and n < 30 and time.time() < deadline):
        step()
        n += 1
    sync(device)
    dt = (time.perf_counter() - t) / n
    row.steps, row.step_ms = n, dt * 1e3
    row.samples_s = row.batch / dt
    row.tokens_s = row.tokens * row.samples_s if row.tokens else None
    row.tflop_step, row.tflops = flops / 1e12, flops / dt / 1e12
    if env.get("spec_bf16_tflops"):
        row.mfu_spec = row.tflops / env["spec_bf16_tflops"]
    if device.type == "cuda" and env.get("matmul_tflops"):
        row.mfu_meas = row.tflops / env["matmul_tflops"]
        row.mem_gb = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def guarded(row: TputRow, fn, device: torch.device) -> TputRow:
    try:
        return fn()
    except Exception as e:  # OOM or a kernel failure ends this setting only
        row.error = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        return row
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def phase_throughput(cfg: ModelConfig, backbone, device: torch.device, env: dict, clock, smoke: bool) -> dict:
    torch.manual_seed(0)
    models = build_models(cfg, text=TextEncoder(cfg.text, backbone))
    models.tae.to(device), models.video.to(device), models.text.to(device)
    s = cfg.tae.spatial_compression
    lh, lw = cfg.sample.height // s, cfg.sample.width // s
    _, ph, pw = cfg.video.patch_size
    prompts = [with_rate(p.prompt, cfg.sample.fps) for p in probe_prompts()]
    out: dict = {"video_params_m": count_params(models.video) / 1e6, "tae_params_m": count_params(models.tae) / 1e6}
    # Random latents stand in for the cache (training reads cached latents, never the TAE). The lr is
    # tiny so random targets cannot blow the weights up across settings; the cost of a step is the same.
    module = trainable_module(models, "video")
    opt = make_optimizer(module, 1e-5, 0.0)
    if smoke:
        settings = [("bf16", 3, 4), ("bf16", 1, 8), ("fp32", 3, 4), ("tf32", 3, 4)]
    else:  # the learning curve's shape first; deadlines cut the tail of the list
        settings = [("bf16", 3, 16), ("bf16", 3, 64), ("bf16", 1, 64), ("bf16", 1, 256), ("bf16", 5, 32),
                    ("bf16", 17, 8), ("bf16", 32, 4), ("fp32", 3, 16), ("tf32", 3, 16), ("fp32", 5, 32), ("tf32", 5, 32)]
    rows = []
    for prec, lt, b in settings:
        row = TputRow("video", prec, cfg.tae.pixel_frames(lt), lt, b, tokens=lt * (lh // ph) * (lw // pw))
        if time.time() > clock(DEADLINES["tp_video"]):
            row.error = "skipped: time box"
            rows.append(row)
            continue

        def run(row=row, prec=prec, lt=lt, b=b) -> TputRow:
            shape = (b, cfg.tae.latent_channels, lt, lh, lw)
            x1 = torch.randn(shape, device=device)
            caps = [prompts[i % len(prompts)] for i in range(b)]
            counter = iter(range(10**9))
            step = lambda: train_step(module, opt, lambda: video_step(  # noqa: E731
                module, models, None, caps, step_generator(0, next(counter)), latents=x1), device, prec == "bf16", 1.0)
            with matmul_precision("high" if prec == "tf32" else "highest"):
                measure_step(row, step, device, env, clock(DEADLINES["tp_video"]), smoke)
            t = time.perf_counter()
            torch.randn(shape, generator=torch.Generator().manual_seed(0))
            row.noise_ms = (time.perf_counter() - t) * 1e3
            return row
        rows.append(guarded(row, run, device))
        log(f"video {prec} lt={lt} b={b}: " + (row.error or f"{row.step_ms:.1f} ms, {row.tflops:.1f} TFLOP/s"))
    out["video"] = [asdict(r) for r in rows]
    del opt, module

    module = trainable_module(models, "tae")
    opt = make_optimizer(module, 1e-5, 0.0)
    settings = [("bf16", 9, 2), ("bf16", 1, 8), ("fp32", 9, 2)] if smoke else \
        [("bf16", 17, 2), ("bf16", 17, 4), ("bf16", 17, 8), ("bf16", 1, 32), ("fp32", 17, 2), ("tf32", 17, 2)]
    rows = []
    for prec, frames, b in settings:
        row = TputRow("tae", prec, frames, cfg.tae.latent_frames(frames), b)
        if time.time() > clock(DEADLINES["tp_tae"]):
            row.error = "skipped: time box"
            rows.append(row)
            continue

        def run(row=row, prec=prec, frames=frames, b=b) -> TputRow:
            x = torch.rand(b, 3, frames, cfg.sample.height, cfg.sample.width, device=device) * 2 - 1
            step = lambda: train_step(module, opt, lambda: tae_step(module, models, x), device, prec == "bf16", 1.0)  # noqa: E731
            with matmul_precision("high" if prec == "tf32" else "highest"):
                return measure_step(row, step, device, env, clock(DEADLINES["tp_tae"]), smoke)
        rows.append(guarded(row, run, device))
        log(f"tae {prec} f={frames} b={b}: " + (row.error or f"{row.step_ms:.1f} ms, {row.tflops:.1f} TFLOP/s"))
    out["tae"] = [asdict(r) for r in rows]
    return out


def phase_compile(size: str, device: torch.device, backend: str, timeout: float, lt: int, batch: int) -> dict:
    """torch.compile of the transformer in a child process: a compile that overruns its box is killed
    (an in-process compile cannot be interrupted and would eat the learning curve's time)."""
    if timeout < 20:
        return {"status": "skipped: no time left in its box"}
    spec = {"size": size, "device": str(device), "backend": backend, "latent_frames": lt, "batch": batch}
    proc = subprocess.Popen([sys.executable, __file__, "--compile-child", json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the child and its inductor compile workers
        proc.communicate()
        return {"status": f"skipped: no result within {timeout:.0f} s", **spec}
    found = [ln for ln in text.splitlines() if ln.startswith("COMPILE_RESULT ")]
    if not found:
        return {"status": f"failed (rc {proc.returncode})", "tail": text[-600:], **spec}
    return {"status": "ok", **json.loads(found[-1][len("COMPILE_RESULT "):])}


def compile_child(spec: dict) -> None:
    """Eager vs torch.compile'd transformer alone (random text features, noise drawn on the device)."""
    device = torch.device(spec["device"])
    if device.type == "cpu":
        torch.set_num_threads(1)  # a smoke run: two threads on a busy 2-core machine ran 60x slower
    cfg = get_config(spec["size"], with_audio=False)
    torch.manual_seed(0)
    model = VideoTransformer(cfg.video).to(device).train()
    s, b, lt = cfg.tae.spatial_compression, spec["batch"], spec["latent_frames"]
    x1 = torch.randn(b, cfg.tae.latent_channels, lt, cfg.sample.height // s, cfg.sample.width // s, device=device)
    text = torch.randn(b, 24, cfg.video.text_dim, device=device)
    mask = torch.ones(b, 24, dtype=torch.bool, device=device)
    opt = make_optimizer(model, 1e-5, 0.0)

    def timed(fn, n: int) -> float:
        step = lambda: train_step(model, opt, lambda: {"loss": flow_matching_loss(  # noqa: E731
            lambda xt, t: fn(xt, t, text, mask), x1, cfg.flow)}, device, True, 1.0)
        step()
        sync(device)
        t = time.perf_counter()
        for _ in range(n):
            step()
        sync(device)
        return (time.perf_counter() - t) / n * 1e3

    n = 3 if device.type == "cpu" else 20
    eager_ms = timed(model, n)
    compiled = torch.compile(model, backend=spec["backend"])
    t = time.perf_counter()
    compiled_ms = timed(compiled, n)  # its first (untimed) step compiles forward and backward
    compile_s = time.perf_counter() - t - compiled_ms * n / 1e3
    print("COMPILE_RESULT " + json.dumps({**spec, "eager_ms": eager_ms, "compiled_ms": compiled_ms,
                                          "speedup": eager_ms / compiled_ms, "compile_s": compile_s}), flush=True)


# ---------------------------------------------------------------- learning curve
def score(frames: np.ndarray, fps: float, spec: PromptSpec) -> dict:
    """training/eval.py `score_sample` on in-memory frames (no mp4, no audio)."""
    m = measure(frames, fps)
    v = judge(m, fps, spec.colour, spec.shape, spec.direction if len(frames) >= 3 else None, audio=False)
    return {**v.to_dict(), "prompt": spec.prompt, "seen_colour": m.colour, "seen_shape": m.shape,
            "seen_direction": m.direction}


@torch.no_grad()
def sample_probe(models, specs: list[PromptSpec], device: torch.device, chunk: int, seed: int = 0) -> np.ndarray:
    """training/generate.py `generate` (video path), batched over prompts and kept on the device:
    same conditioning prompt, seed-0 CPU noise for every prompt (as `evaluate` with 1 seed), schedule,
    shift, guidance and decode; frames come back as uint8 (P, T, H, W, 3) instead of an mp4."""
    cfg = models.config
    models.eval()
    s = cfg.tae.spatial_compression
    lt, lh, lw = cfg.tae.latent_frames(cfg.sample.frames), cfg.sample.height // s, cfg.sample.width // s
    pt, ph, pw = cfg.video.patch_size
    shift = resolution_shift((lt // pt) * (lh // ph) * (lw // pw), cfg.flow.shift_base_tokens) \
        if cfg.flow.use_resolution_shift else 1.0
    x0 = torch.randn(1, cfg.tae.latent_channels, lt, lh, lw, generator=torch.Generator().manual_seed(seed))
    out = []
    for i in range(0, len(specs), chunk):
        part = specs[i:i + chunk]
        text, text_mask = models.text([with_rate(p.prompt, cfg.sample.fps) for p in part])
        cond = dict(text=text, text_mask=text_mask)
        uncond = dict(text=torch.zeros_like(text[:, :1]), text_mask=None)
        lat = euler_sample(guided_velocity(models.video, cond, uncond, cfg.flow.guidance_scale),
                           x0.expand(len(part), -1, -1, -1, -1).to(device), cfg.flow.num_steps, shift=shift,
                           linear_reference_steps=cfg.flow.linear_reference_steps)
        z = lat / cfg.tae.latent_scale
        for j in range(0, len(part), max(1, chunk // 4)):
            zz = z[j:j + max(1, chunk // 4)]
            video = models.tae.decode_tiled(zz) if lt > cfg.tae.tile_latents else models.tae.decode(zz)
            out.append(((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy())
    return np.concatenate(out)


@torch.no_grad()
def eval_tae(models, specs: list[PromptSpec], device: torch.device) -> dict:
    """training/eval.py `evaluate_tae` on the device, PSNR by its formula (skimage is absent; no SSIM)."""
    cfg = models.config
    models.tae.eval()
    fps, n = cfg.sample.fps, cfg.sample.frames
    psnr, rows = [], []
    for i, spec in enumerate(specs):
        rng = np.random.default_rng(1000 * i)
        clip = ShapeClip(colour=spec.colour or "red", shape=spec.shape or "circle", direction=spec.direction or "right",
                         speed=float(rng.uniform(0.3, 0.8)), size=float(rng.uniform(0.14, 0.24)),
                         start=(float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7))))
        truth, _, _ = render_clip(clip, cfg.sample.width, cfg.sample.height, fps, num_frames=n)
        x = to_pixels(torch.from_numpy(truth)[None].to(device))
        rec = ((models.tae.decode(models.tae.encode(x))[0].clamp(-1, 1) + 1) * 127.5).round().byte()
        rec = rec.permute(1, 2, 3, 0).cpu().numpy()
        psnr.append(10 * math.log10(255**2 / max(np.mean((truth.astype(np.float64) - rec) ** 2), 1e-12)))
        seen = measure(truth, fps).direction if n > 1 else None
        rows.append(judge(measure(rec, fps), fps, colour=clip.colour, shape=clip.shape, direction=seen))
    dirs = [r.direction for r in rows if r.direction is not None]
    return {"tae_psnr": float(np.mean(psnr)), "tae_object_present": float(np.mean([r.present for r in rows])),
            "tae_object_colour": float(np.mean([r.colour for r in rows])),
            "tae_object_shape": float(np.mean([r.shape for r in rows])),
            "tae_object_direction": float(np.mean(dirs)) if dirs else None}


def phase_learning(cfg: ModelConfig, backbone, device: torch.device, clock, args, hp: dict, res: dict) -> None:
    """TAE then video transformer on rendered shapes, each until its deadline; results go into `res`
    as they arrive, so a failure late in the phase keeps what came before."""
    fps, H, W = cfg.sample.fps, cfg.sample.height, cfg.sample.width
    cfg.sample.frames = frames = cfg.tae.pixel_frames(3)  # evaluate_tae's default length; the sampler's too
    if hasattr(cfg.sample, "fps_token"):
        cfg.sample.fps_token = True  # trained on FPS-<n> captions: the project's sampler prepends the token
    specs = probe_prompts()[: args.probe_prompts]
    rng = np.random.default_rng(0)
    clips = [random_clip(rng, SHAPES_SIZE, SHAPES_LEAD_IN) for _ in range(args.clips)]
    t = time.time()
    data = torch.from_numpy(np.stack([render_clip(c, W, H, fps, num_frames=frames)[0] for c in clips])).to(device)
    captions = [with_rate(c.caption, fps) for c in clips]  # the probe's text, behind FPS-<fps>, as sampled
    res.update(clips=len(clips), frames=frames, render_s=time.time() - t, hparams=hp,
               captions="training captions = 'FPS-<fps> ' + ShapeClip.caption (the probe's prompt text); "
                        "the probe samples 'FPS-<fps> ' + its prompt (training.captions.with_rate)")
    log(f"rendered {len(clips)} clips {frames}x{H}x{W} in {res['render_s']:.1f}s")

    torch.manual_seed(0)
    models = build_models(cfg, text=TextEncoder(cfg.text, backbone))
    models.tae.to(device), models.video.to(device), models.text.to(device)

    # --- TAE: joint image/video batches of the schedule's latent length at its fraction of the resolution
    module = trainable_module(models, "tae")
    opt = make_optimizer(module, hp["tae_lr"], hp["tae_wd"])
    tae_frames = cfg.tae.pixel_frames(hp["tae_latents"])
    side = max(8 * cfg.tae.spatial_compression, int(round(H * hp["tae_res_ratio"] / 8)) * 8)
    batch, step, curve, window, t_train = hp["tae_batch"], 0, [], [], 0.0
    deadline = clock(DEADLINES["tae"])
    while step < args.min_steps or time.time() < deadline:
        image = rng.random() < hp["tae_image_ratio"]
        idx = torch.from_numpy(rng.choice(len(clips), batch, replace=False)).to(device)
        start = int(rng.integers(0, frames - (1 if image else tae_frames) + 1))
        x = to_pixels(data[idx, start:start + (1 if image else tae_frames)])
        x = torch.nn.functional.interpolate(x, size=(x.shape[2], side, side), mode="area")
        t = time.perf_counter()
        try:
            losses = train_step(module, opt, lambda: tae_step(module, models, x), device, True, hp["tae_clip"])
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch //= 2
            torch.cuda.empty_cache()
            continue
        sync(device)
        t_train += time.perf_counter() - t
        step += 1
        window.append(losses["recon"])
        if step % args.log_every == 0:
            curve.append({"step": step, "wall_s": t_train, "recon": float(np.mean(window)), "batch": batch})
            window = []
    res["tae"] = {"steps": step, "train_s": t_train, "batch": batch, "resolution": side, "frames": tae_frames,
                  "samples_s": step * batch / max(t_train, 1e-9), "curve": curve}
    log(f"TAE {step} steps in {t_train:.0f}s at {side}px (batch {batch})")
    del opt
    res["tae"]["eval"] = eval_tae(models, specs, device)
    log("TAE eval " + " ".join(f"{k} {v:.2f}" for k, v in res["tae"]["eval"].items() if v is not None))

    # --- latent cache: encoded once under autocast as the loop's LatentCache does, kept in fp32
    models.tae.eval()
    with amp(device, True):  # encode_latents: no_grad, posterior mean x latent_scale (still 1 here)
        raw = torch.cat([encode_latents(models, to_pixels(data[i:i + 8])).float() for i in range(0, len(clips), 8)])
    cfg.tae.latent_scale = 1.0 / max(float(raw.double().std()), 1e-6)  # StageRunner.measure_latent_scale
    latents = raw * cfg.tae.latent_scale
    del data, raw
    res["latent_scale"] = cfg.tae.latent_scale

    # --- video transformer on cached latents; the shapes probe at fixed points of the time box
    module = trainable_module(models, "video")
    opt = make_optimizer(module, hp["video_lr"], hp["video_wd"])
    batch, step, window, t_train, curve, evals = hp["video_batch"], 0, [], 0.0, [], []
    start, deadline = time.time(), clock(DEADLINES["video"])
    eval_at = [start + f * (deadline - start) for f in (0.2, 0.45, 0.7)]
    eval_s = 30.0 if device.type == "cuda" else 3.0  # re-estimated from the first evaluation
    res["video"] = {"curve": curve, "evals": evals, "batch": batch}

    def evaluate() -> None:
        nonlocal eval_s
        t = time.time()
        with matmul_precision("high"):  # TF32 for the 50-step sampler: the time box is short
            frames_np = sample_probe(models, specs, device, args.eval_chunk)
        rows = [score(f, fps, spec) for f, spec in zip(frames_np, specs)]
        eval_s = time.time() - t
        evals.append({"step": step, "train_s": t_train, **{k: v for k, v in summarize(rows).items() if v is not None},
                      "eval_s": eval_s})
        res["video"]["last_samples"] = rows
        res["_frames"] = frames_np
        log(f"video eval @ {step}: " + " ".join(f"{k} {v:.2f}" for k, v in evals[-1].items() if k != "step"))
        module.train()

    while step < args.min_steps or time.time() < deadline - 1.2 * eval_s:
        for g in opt.param_groups:  # StageSpec.lr_at: linear warm-up, then constant
            g["lr"] = hp["video_lr"] * min(1.0, (step + 1) / max(1, hp["video_warmup"]))
        idx = torch.from_numpy(rng.choice(len(clips), batch, replace=False)).to(device)
        caps = [captions[i] for i in idx.tolist()]
        t = time.perf_counter()
        losses = train_step(module, opt, lambda: video_step(module, models, None, caps, step_generator(0, step),
                                                            latents=latents[idx]), device, True, hp["video_clip"])
        t_train += time.perf_counter() - t
        step += 1
        window.append(losses["loss"])
        if step % args.log_every == 0:
            curve.append({"step": step, "wall_s": t_train, "loss": float(np.mean(window)),
                          "samples_s": args.log_every * batch / max(t_train - (curve[-1]["wall_s"] if curve else 0), 1e-9)})
            window = []
        if eval_at and time.time() >= eval_at[0]:
            eval_at.pop(0)
            if deadline - time.time() > 2.5 * eval_s:  # not one just before the final evaluation
                evaluate()
    if not evals or evals[-1]["step"] != step:
        evaluate()
    res["video"].update(steps=step, train_s=t_train, samples_s=step * batch / max(t_train, 1e-9))


def contact_sheet(frames: np.ndarray, rows: list[dict], path: Path, n: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(frames))
    cols = min(6, frames.shape[1])
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.8 * n), squeeze=False)
    for i in range(n):
        for j, k in enumerate(np.linspace(0, frames.shape[1] - 1, cols).round().astype(int)):
            axes[i][j].imshow(frames[i, k])
            axes[i][j].axis("off")
        r = rows[i]
        ok = lambda v: "-" if v is None else ("ok" if v >= 1 else "NO")  # noqa: E731
        axes[i][0].set_title(f"{r['prompt'][:48]}\npresent {ok(r['present'])} colour {ok(r['colour'])} "
                             f"shape {ok(r['shape'])} dir {ok(r['direction'])}", fontsize=6, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_out"))
    ap.add_argument("--budget-s", type=float, default=None, help="whole run, wall seconds (default 420; smoke 90 after start-up)")
    ap.add_argument("--minilm", default=None, help="local MiniLM dir (bench/make_gpu_carry.py); default: the package")
    ap.add_argument("--smoke", action="store_true", help="CPU-sized: tiny config, few steps, every phase")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", default=None, help="model config (default small; smoke tiny)")
    ap.add_argument("--clips", type=int, default=None, help="rendered training clips (default 256; smoke 32)")
    ap.add_argument("--probe-prompts", type=int, default=None, help="shapes probe prompts (default 24; smoke 6)")
    ap.add_argument("--compile-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.compile_child:
        compile_child(json.loads(args.compile_child))
        return 0
    smoke = args.smoke
    args.budget_s = args.budget_s or (90.0 if smoke else 420.0)
    args.size = args.size or ("tiny" if smoke else "small")
    args.clips = args.clips or (32 if smoke else 256)
    args.probe_prompts = args.probe_prompts or (6 if smoke else 24)
    args.eval_chunk = 6 if smoke else 24
    args.log_every = 5 if smoke else 50
    args.min_steps = 3 if smoke else 20  # even when an earlier phase overran its box
    device = torch.device(args.device)
    if smoke:
        torch.set_num_threads(1)  # a smoke run shares its machine
    args.out.mkdir(parents=True, exist_ok=True)
    res: dict = {"meta": {k: str(v) for k, v in vars(args).items() if k != "compile_child"}, "errors": {}}
    md: list[str] = [f"# gpu_small ({args.size}, {device}, budget {args.budget_s:.0f} s)"]

    def save() -> None:
        """Both files after every phase: a run cut short (device time out, a CUDA fault) keeps what it had."""
        res["total_s"] = time.time() - T0
        (args.out / "gpu_small.json").write_text(json.dumps(
            res, indent=1, default=lambda o: "<array>" if isinstance(o, np.ndarray) else str(o)))
        errors = "\n".join(f"- {k}: {v.strip().splitlines()[-1][:200]}" for k, v in res["errors"].items())
        tail = f"\nTotal {res['total_s']:.0f} s.\n" + (f"\nErrors:\n{errors}\n" if errors else "")
        (args.out / "gpu_small.md").write_text("\n".join(md) + "\n" + tail)

    def phase(name: str, fn):
        log(f"== {name}")
        try:
            return fn()
        except Exception as e:
            res["errors"][name] = traceback.format_exc()[-2000:]
            log(f"{name} FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            return None
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            save()

    def emit(title: str, body: str) -> None:
        md.append(f"\n## {title}\n\n{body}")
        print(f"\n## {title}\n{body}\n", flush=True)

    cfg = get_config(args.size, with_audio=False)  # the audio model is skipped
    if args.minilm:
        cfg.text.path = args.minilm

    def load_text():
        b = load_backbone(cfg.text)
        if b is not None:
            b.model.float()  # the carried copy is fp16 and loading keeps that dtype: compute in fp32
            b.model.to(device)
        return b
    backbone = phase("text_backbone", load_text)
    if backbone is None and cfg.text.backbone != "none":
        cfg.text.backbone = "none"  # throughput still runs; probe prompts have no quotes, so nothing conditions
        res["meta"]["text"] = "MiniLM failed to load: char encoder only (learning curve meaningless)"

    # A real run's deadlines count from process start; a smoke run's from here, since imports and the
    # backbone take 20-30 s on a loaded 2-core machine and would leave its small boxes empty.
    base = time.time() if smoke else T0
    clock = lambda frac: base + frac * args.budget_s  # noqa: E731
    env = phase("env", lambda: phase_env(device, smoke)) or {}
    res["env"] = env
    if env:
        emit("Environment", md_table([env], ["name", "torch", "capability", "memory_gb", "matmul", "matmul_tflops",
                                             "spec_bf16_tflops", "tf32_matmul", "cudnn_tf32"]))

    tp = phase("throughput", lambda: phase_throughput(cfg, backbone, device, env, clock, smoke))
    if tp:
        res["throughput"] = tp
        cols = ["precision", "frames", "latent_frames", "batch", "tokens", "step_ms", "samples_s", "tokens_s",
                "tflop_step", "tflops", "mfu_spec", "mfu_meas", "mem_gb", "noise_ms", "error"]
        emit(f"Video stage throughput ({args.size}: {tp['video_params_m']:.1f}M params, {cfg.sample.height} px, "
             "fwd+bwd+AdamW, cached-latent shapes)", md_table(tp["video"], cols) + "\n\nmfu_spec: TFLOP/s over the "
             "dense bf16 datasheet peak; mfu_meas: over the measured matmul peak (fp32/tf32 rows too). noise_ms: "
             "CPU randn of one step's noise (video_step draws it on a CPU generator), inside step_ms."
             + (" On CPU autocast is off (CUDA-only, as in training/loop.py): bf16 rows run fp32." if device.type == "cpu" else ""))
        emit(f"TAE stage throughput ({tp['tae_params_m']:.1f}M params, {cfg.sample.height} px)",
             md_table(tp["tae"], [c for c in cols if c not in ("tokens", "tokens_s", "noise_ms")])
             + f"\n\nfp32 rows: convolutions use TF32 whenever cudnn_tf32 is True ({env.get('cudnn_tf32')}).")

    comp = phase("compile", lambda: phase_compile(args.size, device, "aot_eager" if smoke else "inductor",
                                                  40.0 if smoke else min(90.0, clock(DEADLINES["compile"]) - time.time()), 3,
                                                  4 if smoke else 16))
    if comp:
        res["compile"] = comp
        emit("torch.compile (transformer alone, bf16, lt=3)", md_table([comp], ["status", "backend", "batch",
                                                                              "eager_ms", "compiled_ms", "speedup",
                                                                              "compile_s"]))

    hp = phase("schedule", lambda: schedule_hparams(args.size))
    lc: dict = {}
    res["learning"] = lc
    if hp:
        phase("learning", lambda: phase_learning(cfg, backbone, device, clock, args, hp, lc))
    frames_np = lc.pop("_frames", None)
    if "tae" in lc:
        tae = lc["tae"]
        emit(f"Learning curve ({hp['schedule']} lr/batch/warm-up; bf16 autocast on CUDA): TAE",
             f"{tae['steps']} steps, {tae['train_s']:.0f} s, {tae['samples_s']:.1f} samples/s, batch {tae['batch']}, "
             f"{tae['resolution']} px x {tae['frames']} frames (images {hp['tae_image_ratio']:.0%})\n\n"
             + md_table([tae.get("eval", {})], ["tae_psnr", "tae_object_present", "tae_object_colour",
                                                "tae_object_shape", "tae_object_direction"]))
    if lc.get("video", {}).get("evals"):
        v = lc["video"]
        emit(f"Learning curve: video transformer (batch {v['batch']}, {lc['clips']} clips, shapes probe "
             f"{args.probe_prompts} prompts x 1 seed; {lc['captions']})",
             f"{v.get('steps')} steps, {v.get('train_s', 0):.0f} s training, {v.get('samples_s', 0):.1f} samples/s, "
             f"loss {v['curve'][0]['loss'] if v['curve'] else float('nan'):.3f} -> "
             f"{v['curve'][-1]['loss'] if v['curve'] else float('nan'):.3f}, latent_scale {lc.get('latent_scale', 0):.3g}\n\n"
             + md_table(v["evals"], ["step", "train_s", "present", "colour", "shape", "direction", "eval_s"]))
    if frames_np is not None:
        phase("samples_png", lambda: contact_sheet(frames_np, lc["video"]["last_samples"], args.out / "samples.png"))

    save()
    log(f"done in {res['total_s']:.0f}s; errors: {sorted(res['errors']) or 'none'}; wrote {args.out}")
    produced = any(res.get(k) for k in ("env", "throughput", "compile")) or bool(lc.get("tae"))
    return 0 if produced else 1


if __name__ == "__main__":
    sys.exit(main())
