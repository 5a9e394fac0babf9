"""Throughput and MFU of the video transformer at growing widths: DDP vs FSDP2, activation
checkpointing off vs full, through the project's own `training.parallel.parallelize`.

    .venv/bin/python bench/train_mfu.py                      # CPU: 2 gloo processes, widths 64,128,256
    .venv/bin/python bench/train_mfu.py --quick              # CPU: < 60 s check that it all runs
    bash bench/gpu_mfu.sh                                    # GPU: one process per GPU (NCCL), bf16; see there
    python3 bench/train_mfu.py --widths 1024,2048 --layers 8 --steps 10 --profile --json out.json

`--procs` processes (CPU default 2, gloo; CUDA: one per GPU, NCCL) join one process group
(MASTER_ADDR=127.0.0.1, a free port; no Ray) and run every config in turn. For each width, each
strategy (`--strategies`, default ddp,fsdp) and each activation-checkpointing setting (`--ac`,
default off,full), every rank builds the same `VideoTransformer` (seed 0; on CUDA directly on the
GPU), wraps it with `training.parallel.parallelize(module, ParallelismSpec(...), world, device,
bf16)` and steps it as `training/loop.py` does: flow-matching loss (`models.flow_matching.
flow_matching_loss`, bf16 autocast on CUDA) -> isfinite check -> zero_grad -> backward -> `training.parallel.
clip_grad_norm(module, 1.0)` -> AdamW step (the loop's two parameter groups, betas 0.9/0.95) ->
`loss.item()`. Inputs are fixed random latents (B, C, T, H, W) per rank, random text embeddings
(B, L_text, text_dim) with an all-true mask, noise from a generator on the device (the loop draws
it on a CPU generator: bench/gpu_small.py's noise_ms measures that cost separately). `--warmup`
untimed steps, then `--steps` timed (CUDA synchronised; a step takes its slowest rank's time).
`--rounds` (CPU 3, GPU 1) runs each width's configs that many times, interleaved, each round a fresh
build; the step time reported is the median step of the best round (on a shared CPU machine other
processes only add time). The load average before and after is printed.

Shapes. heads = dim / `--head-dim` (CPU 32, GPU 128), ffn = 8/3 dim rounded up to a multiple of 4
(dim < 512) or 128 (as models/configs.py's tiny 64->172 and small 512->1408), `--layers` blocks at
every width (CPU 4, GPU 8: depth multiplies time and memory, not the per-layer efficiency that MFU
measures). Tokens per sample = T * H/2 * W/2 (patch 1x2x2); CPU default latents (8, 4, 16, 16) =
256 tokens, batch 2 per rank, 16 text tokens of dim 64 (tiny's); GPU default (16, 8, 64, 64) =
8192 tokens, batch 1 per GPU, 256 text tokens of dim 4096 (moviegen's).

FLOPs (`model_flops`) are counted per matmul, forward x 3 (backward = 2 x forward):
    3 * 2 * (P_tok * N + P_text * L_text + P_sample)       weights times the tokens they multiply
  + 3 * 4 * n_layers * d * (N^2 + N * L_text)              self- and cross-attention scores and A.V
per sample, where P_tok are the weights every video token goes through (patch embedding, per block
self-attention q,k,v,o, cross-attention q,o and the FFN, final projection), P_text those applied to
the text tokens (text projection, cross-attention k,v), P_sample the per-sample time embedding.
That is the usual 6 * P * tokens + 12 * layers * d * N^2 with the cross-attention's k,v weights
charged to the text tokens, not the video tokens. torch.utils.flop_counter.FlopCounterMode agrees on
the matmuls and the attention forward exactly; it counts the attention backward as 2.5 x forward
(the flash kernel recomputes the scores), this 2 x (2% more FLOPs at width 256 with 256 tokens).
Activation checkpointing recomputes a forward, but the model FLOPs (and MFU, useful work) stay the
same; `hfu` in --json counts the recompute.
MFU = model TFLOP/s per GPU / the dense bf16 peak (H100 SXM and H200: 989; `--peak-tflops`).
On CPU MFU is n/a and the achieved GFLOP/s per process is reported.

Memory: torch.cuda.max_memory_allocated per config on CUDA; on CPU the RSS high-water over the RSS
the config started from (glibc's malloc_trim, then VmHWM reset through /proc/self/clear_refs), max
over ranks. One untimed step of the first config runs before the table, so that one-off set-up does
not land on its first row. On one GPU, "ddp" is the bare module (parallelize wraps nothing for one
worker) and "fsdp" fully_shard over a 1-rank mesh. A CUDA out-of-memory in a config is
reported as OOM and the run goes on (one GPU; with several, a rank that runs out alone leaves the
others waiting in a collective until the process group times out). Widths stop growing once a config
took longer than `--max-seconds`, and no width starts that would, by the last width's step times
scaled by FLOPs, end after `--budget-s` (a width runs whole: its ratios need its own baseline).

`--profile`: a torch.profiler pass over a few steps of the largest width's fastest config (or
`--profile-config strategy,ac`), rank 0: GPU kernel time by category (matmul, attention,
communication, optimizer/clip, norm, copy/cast, elementwise/other; from the exported Chrome trace)
and how much of the wall the GPU was idle; on CPU, self CPU time by category (plus the FSDP/DDP
wrappers' own host time).
"""

from __future__ import annotations

import time

T0 = time.time()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import ctypes  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import checkout  # noqa: E402,F401  (reelflow from this checkout when it is not installed)
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from reelflow.models.flow_matching import FlowMatchingConfig, flow_matching_loss  # noqa: E402
from reelflow.models.video_transformer import VideoTransformer, VideoTransformerConfig, count_params  # noqa: E402
from reelflow.training.parallel import clip_grad_norm, parallelize  # noqa: E402
from reelflow.training.schedule import ParallelismSpec  # noqa: E402

# Dense bf16 datasheet peaks (TFLOP/s), first match on the device name wins (as bench/gpu_small.py).
SPEC_BF16_TFLOPS = {"H200 NVL": 836.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H200": 989.0, "H100": 989.0,
                    "A100": 312.0}
CPU_DEFAULTS = dict(widths="64,128,256", layers=4, head_dim=32, latent="8,4,16,16", batch=2, text_len=16,
                    text_dim=64, warmup=2, steps=4, rounds=3, max_seconds=120.0, budget_s=900.0)
GPU_DEFAULTS = dict(widths="1024,2048,3072,4096,5120,6144", layers=8, head_dim=128, latent="16,8,64,64", batch=1,
                    text_len=256, text_dim=4096, warmup=3, steps=10, rounds=1, max_seconds=60.0,
                    budget_s=330.0)
QUICK = dict(widths="32,64", layers=2, head_dim=16, latent="4,2,8,8", batch=2, text_len=8, text_dim=32, warmup=1,
             steps=2, rounds=1, max_seconds=20.0, budget_s=45.0)
LR, WEIGHT_DECAY, GRAD_CLIP = 1e-4, 0.01, 1.0


# -- shapes and FLOPs --------------------------------------------------------------------------
def round_up(x: float, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


def model_config(width: int, args) -> VideoTransformerConfig:
    c, t, h, w = args.latent_shape
    if width % args.head_dim:
        raise SystemExit(f"width {width} is not a multiple of --head-dim {args.head_dim}")
    ffn = round_up(8 * width / 3, 128 if width >= 512 else 4)
    return VideoTransformerConfig(latent_channels=c, dim=width, n_layers=args.layers, n_heads=width // args.head_dim,
                                  ffn_dim=ffn, text_dim=args.text_dim, max_frames=t, max_height=h // 2,
                                  max_width=w // 2)


def tokens_per_sample(cfg: VideoTransformerConfig, latent: tuple[int, int, int, int]) -> int:
    _, t, h, w = latent
    pt, ph, pw = cfg.patch_size
    return (t // pt) * (h // ph) * (w // pw)


def model_flops(cfg: VideoTransformerConfig, n_tok: int, n_text: int, freq_dim: int = 256) -> float:
    """Training FLOPs of one sample (forward + backward = 3 x forward), matmuls and attention only."""
    d, n_layers, f = cfg.dim, cfg.n_layers, cfg.ffn_dim
    patch = cfg.latent_channels * math.prod(cfg.patch_size)
    ffn_mats = 3 if cfg.ffn_kind == "swiglu" else 2
    p_tok = patch * d + n_layers * (4 * d * d + 2 * d * d + ffn_mats * d * f) + d * patch
    p_text = cfg.text_dim * d + n_layers * 2 * d * d
    p_sample = freq_dim * d + d * d + 6 * d * d + 2 * d * d  # time MLP, adaLN-single, final modulation
    fwd = 2 * (p_tok * n_tok + p_text * n_text + p_sample) + 4 * n_layers * d * (n_tok * n_tok + n_tok * n_text)
    return 3.0 * fwd


def recompute_flops(cfg: VideoTransformerConfig, n_tok: int, n_text: int, every: int) -> float:
    """Extra FLOPs of one sample when every `every`-th block's forward runs again in backward."""
    if not every:
        return 0.0
    d, f = cfg.dim, cfg.ffn_dim
    per_block = (2 * ((6 * d * d + (3 if cfg.ffn_kind == "swiglu" else 2) * d * f) * n_tok + 2 * d * d * n_text)
                 + 4 * d * (n_tok * n_tok + n_tok * n_text))
    return per_block * len(range(0, cfg.n_layers, every))


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in SPEC_BF16_TFLOPS.items() if k in name), None)


# -- one config --------------------------------------------------------------------------------
@dataclass
class Result:
    width: int
    layers: int
    heads: int
    ffn: int
    strategy: str
    ac: str
    params: int = 0
    tokens_per_step: int = 0  # global
    flops_per_step: float = 0.0  # model FLOPs, global
    status: str = "ok"  # ok | OOM | skipped: ... | error: ...
    step_s: float | None = None
    tokens_per_s: float | None = None
    tflops_per_device: float | None = None  # model FLOPs / step time / devices (GFLOP/s = x 1000)
    mfu: float | None = None
    hfu: float | None = None  # with the recomputed forward counted
    peak_mem_gb: float | None = None
    mem_kind: str = ""
    wall_s: float = 0.0  # build + warm-up + timed steps
    loss: float | None = None
    vs_baseline: float | None = None  # tokens/s over DDP, AC off, same width, same run
    extra: dict = field(default_factory=dict)


def proc_status_gb(key: str) -> float | None:
    try:
        m = re.search(rf"{key}:\s+(\d+)\s*kB", Path("/proc/self/status").read_text())
        return int(m.group(1)) / 2**20 if m else None
    except OSError:
        return None


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with contextlib.suppress(OSError, AttributeError):  # glibc: hand the freed heap back to the OS
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def peak_memory_gb(device: torch.device, rss_base: float | None) -> float | None:
    """CUDA: the allocator's peak. CPU: the RSS high-water over the RSS the config started from."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    hwm = proc_status_gb("VmHWM")
    return hwm - rss_base if hwm is not None and rss_base is not None else None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_optimizer(module: torch.nn.Module) -> torch.optim.Optimizer:
    """reelflow.training.loop.StageRunner.make_optimizer: no weight decay on norms, biases, gains."""
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.95))


class Trainer:
    """One config built and wrapped on this rank, stepped as training/loop.py steps."""

    def __init__(self, cfg: VideoTransformerConfig, strategy: str, ac: str, args, device: torch.device,
                 world: int, rank: int):
        torch.manual_seed(0)  # identical weights on every rank (FSDP shards each rank's own copy)
        with torch.device(device):  # built, and initialised, where it runs
            model = VideoTransformer(cfg)
        self.params = count_params(model)
        spec = ParallelismSpec(strategy=strategy, activation_checkpointing=ac, compile=args.compile)
        self.every = spec.checkpoint_every()
        bf16 = args.precision == "bf16"
        self.module = parallelize(model, spec, world, device, bf16=bf16).module
        self.optimizer = make_optimizer(self.module)
        c, t, h, w = args.latent_shape
        g = torch.Generator(device).manual_seed(1000 + rank)
        self.x1 = torch.randn(args.batch, c, t, h, w, device=device, generator=g)
        self.text = torch.randn(args.batch, args.text_len, args.text_dim, device=device, generator=g)
        self.mask = torch.ones(args.batch, args.text_len, dtype=torch.bool, device=device)
        self.noise = torch.Generator(device).manual_seed(2000 + rank)
        self.n_tok = tokens_per_sample(cfg, args.latent_shape)
        self.flow = FlowMatchingConfig()
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda"
                         else contextlib.nullcontext())  # training.loop._autocast

    def step(self) -> float:
        module = self.module
        with self.autocast:
            loss = flow_matching_loss(lambda xt, t: module(xt, t, self.text, self.mask), self.x1, self.flow,
                                      num_tokens=self.n_tok, generator=self.noise)
        if not torch.isfinite(loss):  # the loop checks every step (a sync before backward on CUDA)
            raise FloatingPointError(f"loss is {loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm(module, GRAD_CLIP)
        self.optimizer.step()
        return loss.item()  # the loop reads the loss every step


def is_oom(e: BaseException) -> bool:
    msg = str(e).lower()
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in msg or "alloc_failed" in msg


def run_config(res: Result, cfg: VideoTransformerConfig, args, device: torch.device, world: int,
               rank: int, warmup: int | None = None, steps: int | None = None) -> dict:
    """This rank's measurement of one config; every rank returns, OOM or not."""
    warmup = args.warmup if warmup is None else warmup
    steps = args.steps if steps is None else steps
    reset_memory(device)
    rss_base = proc_status_gb("VmRSS")
    out: dict = {"status": "ok"}
    t_start = time.perf_counter()
    trainer = None
    try:
        trainer = Trainer(cfg, res.strategy, res.ac, args, device, world, rank)
        out.update(params=trainer.params, every=trainer.every)
        for _ in range(warmup):
            trainer.step()
        sync(device)
        dist.barrier()
        loss, times = 0.0, []
        for _ in range(steps):
            t0 = time.perf_counter()
            loss = trainer.step()  # its loss.item() waits for the GPU
            sync(device)
            times.append(time.perf_counter() - t0)
        out.update(times=times, loss=loss)
    except Exception as e:  # noqa: BLE001 - reported per config, the run goes on
        out["status"] = "OOM" if is_oom(e) else f"error: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        if not is_oom(e) and rank == 0:
            traceback.print_exc()
    out["peak_mem_gb"] = peak_memory_gb(device, rss_base)
    del trainer  # outside the except block: its traceback no longer holds the tensors
    reset_memory(device)
    out["wall_s"] = time.perf_counter() - t_start
    return out


def merge(res: Result, rounds: list[list[dict]], world: int, peak: float | None, device: torch.device, args,
          cfg: VideoTransformerConfig) -> None:
    """Fold every round's and every rank's measurement into `res` (slowest rank's step time, median
    over all timed steps of all rounds, largest memory; `wall_s`: the longest round)."""
    outs = [o for r in rounds for o in r]
    bad = [o["status"] for o in outs if o["status"] != "ok"]
    res.status = "OOM" if "OOM" in bad else (bad[0] if bad else "ok")
    res.params = max(o.get("params", 0) for o in outs)
    res.wall_s = max(o["wall_s"] for o in outs)
    res.extra["rounds"] = len(rounds)
    mems = [o["peak_mem_gb"] for o in outs if o.get("peak_mem_gb") is not None]
    res.peak_mem_gb = max(mems) if mems else None
    res.mem_kind = "max_memory_allocated" if device.type == "cuda" else "RSS high-water over the config's start"
    if res.status != "ok":
        return
    n_tok = tokens_per_sample(cfg, args.latent_shape)
    # A step takes as long as its slowest rank. Per round the median step (resists the odd slow step:
    # an allocator flush); over rounds the best (on a shared machine, other processes only ever add
    # time: the least disturbed round is the closest to this config's own cost).
    per_round = [[max(ts) for ts in zip(*(o["times"] for o in r))] for r in rounds]
    res.step_s = min(statistics.median(steps) for steps in per_round)
    res.extra["round_medians_s"] = [statistics.median(steps) for steps in per_round]
    res.extra["step_s_all"] = per_round
    res.loss = outs[0]["loss"]
    res.tokens_per_s = res.tokens_per_step / res.step_s
    res.tflops_per_device = res.flops_per_step / res.step_s / world / 1e12
    every = outs[0].get("every", 0)
    hw = res.flops_per_step + recompute_flops(cfg, n_tok, args.text_len, every) * args.batch * world
    if peak:
        res.mfu = res.tflops_per_device / peak
        res.hfu = hw / res.step_s / world / 1e12 / peak


# -- profile -----------------------------------------------------------------------------------
CATEGORIES = (  # first match wins, on the lower-cased kernel / op name
    ("communication", ("nccl", "gloo", "c10d::", "all_reduce", "allreduce", "all_gather", "allgather",
                       "reduce_scatter", "reducescatter", "record_param_comms")),
    # FSDP2's / DDP's own host-side work: its annotated ranges' self time, DTensor dispatch
    ("fsdp/ddp wrapper", ("fsdp::", "distributeddataparallel", "pythonsubclass")),
    ("attention", ("flash", "fmha", "attention", "attn", "sdpa")),
    ("optimizer/clip", ("multi_tensor", "adam", "_foreach")),  # AdamW and clip_grad_norm's foreach norms
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "aten::mm", "aten::addmm", "aten::bmm",
                "aten::matmul", "matmul", "wgmma", "sm90_", "convolution", "cudnn", "mkldnn")),
    ("norm", ("rms_norm", "rmsnorm", "layer_norm", "layernorm", "norm_kernel", "aten::norm")),
    ("copy/cast", ("memcpy", "memset", "copy", "to_copy", "cast", "aten::to", "fill")),
)


def category(name: str) -> str:
    low = name.lower()
    return next((cat for cat, keys in CATEGORIES if any(k in low for k in keys)), "elementwise/other")


def union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -math.inf
    for s, e in sorted(intervals):
        if e > end:
            total += e - max(s, end)
            end = e
    return total


def gpu_breakdown(trace: Path, wall_us: float) -> dict:
    """Kernel time by category from a Chrome trace (the profiler's export; stable across versions)."""
    events = json.loads(trace.read_text()).get("traceEvents", [])
    kernels = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    by_cat: dict[str, float] = {}
    top: dict[str, float] = {}
    for e in kernels:
        by_cat[category(e["name"])] = by_cat.get(category(e["name"]), 0.0) + e["dur"]
        top[e["name"]] = top.get(e["name"], 0.0) + e["dur"]
    compute = [(e["ts"], e["ts"] + e["dur"]) for e in kernels if category(e["name"]) != "communication"]
    busy = union_us([(e["ts"], e["ts"] + e["dur"]) for e in kernels])
    kernel_total = sum(by_cat.values())
    return {"unit": "GPU kernel time", "wall_ms": wall_us / 1e3, "kernel_ms": kernel_total / 1e3,
            "busy_ms": busy / 1e3, "compute_busy_ms": union_us(compute) / 1e3,
            "idle_frac": max(0.0, 1 - busy / wall_us) if wall_us else None,
            "categories": {k: {"ms": v / 1e3, "frac": v / kernel_total} for k, v in
                           sorted(by_cat.items(), key=lambda kv: -kv[1])},
            "top": [{"name": k[:120], "ms": v / 1e3, "category": category(k)} for k, v in
                    sorted(top.items(), key=lambda kv: -kv[1])[:15]]}


def cpu_breakdown(prof, wall_us: float) -> dict:
    """Self CPU time of the ops by category (this rank's threads; nested ops are not double counted)."""
    by_cat: dict[str, float] = {}
    top: dict[str, float] = {}
    for e in prof.key_averages():
        us = e.self_cpu_time_total
        if us <= 0 or e.key.startswith("ProfilerStep"):
            continue
        by_cat[category(e.key)] = by_cat.get(category(e.key), 0.0) + us
        top[e.key] = us
    total = sum(by_cat.values())
    return {"unit": "self CPU time", "wall_ms": wall_us / 1e3, "op_ms": total / 1e3,
            "categories": {k: {"ms": v / 1e3, "frac": v / total} for k, v in
                           sorted(by_cat.items(), key=lambda kv: -kv[1])},
            "top": [{"name": k[:120], "ms": v / 1e3, "category": category(k)} for k, v in
                    sorted(top.items(), key=lambda kv: -kv[1])[:15]]}


def profile_config(res: Result, cfg: VideoTransformerConfig, args, device: torch.device, world: int,
                   rank: int) -> dict | None:
    from torch.profiler import ProfilerActivity, profile

    reset_memory(device)
    trainer = Trainer(cfg, res.strategy, res.ac, args, device, world, rank)
    for _ in range(max(1, args.warmup)):
        trainer.step()
    sync(device)
    dist.barrier()
    steps = args.profile_steps
    out = None
    if rank != 0:
        for _ in range(steps):
            trainer.step()
        sync(device)
    else:
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                trainer.step()
            sync(device)
            wall_us = (time.perf_counter() - t0) * 1e6
        if device.type == "cuda":
            with tempfile.TemporaryDirectory() as d:
                trace = Path(d) / "trace.json"
                prof.export_chrome_trace(str(trace))
                out = gpu_breakdown(trace, wall_us)
        else:
            out = cpu_breakdown(prof, wall_us)
        out.update(config=f"width {res.width}, {res.strategy}, AC {res.ac}", steps=steps,
                   step_ms_profiled=wall_us / 1e3 / steps)
    del trainer
    reset_memory(device)
    dist.barrier()
    return out


# -- the worker --------------------------------------------------------------------------------
def plan(args) -> list[Result]:
    rows = []
    for width in args.width_list:
        cfg = model_config(width, args)
        for strategy in args.strategy_list:
            for ac in args.ac_list:
                rows.append(Result(width=width, layers=cfg.n_layers, heads=cfg.n_heads, ffn=cfg.ffn_dim,
                                   strategy=strategy, ac=str(ac)))
    return rows


def decide(res: Result, done: list[Result], args, stop_after: int | None, start: float) -> str | None:
    """Rank 0: why the width of `res` is skipped (None: run it). A width runs whole or not at all (its
    ratios need its DDP/AC-off baseline): its time is estimated from the last width's timed steps
    scaled by FLOPs (+20% for building), and it is skipped if that would end past --budget-s."""
    if stop_after is not None and res.width > stop_after:
        return f"skipped: width {stop_after} took over --max-seconds {args.max_seconds:g}"
    left = args.budget_s - (time.time() - start)
    if left <= 0:
        return f"skipped: --budget-s {args.budget_s:g} spent"
    prev = [r for r in done if r.status == "ok"]
    if prev:
        last = max(r.width for r in prev)
        est = sum(1.2 * r.step_s * (args.warmup + args.steps) * args.rounds * res.flops_per_step / r.flops_per_step
                  for r in prev if r.width == last)
        if est > left:
            return f"skipped: --budget-s {args.budget_s:g} (left {left:.0f} s, width estimate {est:.0f} s)"
    return None


def worker(rank: int, world: int, port: int, args, result_path: str, start: float) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        torch.set_num_threads(args.threads)
        device = torch.device("cpu")
    timeout = datetime.timedelta(seconds=max(300.0, 3 * args.max_seconds))
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world, timeout=timeout)
    try:
        peak = peak_tflops(device, args.peak_tflops)
        results = plan(args)
        done: list[Result] = []
        stop_after: int | None = None
        # One untimed step of the first config first: one-off costs (lazy imports, communicator and
        # kernel-library set-up) would otherwise land on the first row.
        first = results[0]
        run_config(first, model_config(first.width, args), args, device, world, rank, warmup=1, steps=0)
        dist.barrier()
        for width in args.width_list:
            group = [r for r in results if r.width == width]
            cfg = model_config(width, args)
            n_tok = tokens_per_sample(cfg, args.latent_shape)
            for res in group:
                res.tokens_per_step = n_tok * args.batch * world
                res.flops_per_step = model_flops(cfg, n_tok, args.text_len) * args.batch * world
            why = [decide(group[0], done, args, stop_after, start) if rank == 0 else None]
            dist.broadcast_object_list(why, src=0)
            if why[0]:
                for res in group:
                    res.status = why[0]
            else:
                # Rounds interleave the configs (a, b, c, d, a, b, ...): a slow spell of another
                # process on the machine then falls on all of them, not on one config's ratio.
                rounds: list[list[list[dict]]] = [[] for _ in group]
                for rnd in range(args.rounds):
                    for k, res in enumerate(group):
                        if any(o["status"] != "ok" for r in rounds[k] for o in r):
                            continue  # OOM or failed in an earlier round: once is enough
                        local = run_config(res, cfg, args, device, world, rank)
                        outs: list = [None] * world
                        dist.all_gather_object(outs, local)
                        rounds[k].append(outs)
                        if rank == 0 and args.rounds > 1:
                            step = max(statistics.median(o["times"]) for o in outs) if local.get("times") else None
                            print(f"[{time.time() - start:6.1f}s]   round {rnd + 1}: width {width}, {res.strategy}, "
                                  f"AC {res.ac}: " + (f"{step * 1e3:.0f} ms/step" if step else outs[0]["status"]),
                                  flush=True)
                for res, rs in zip(group, rounds):
                    merge(res, rs, world, peak, device, args, cfg)
                    if res.wall_s > args.max_seconds and stop_after is None:
                        stop_after = res.width
            done.extend(group)
            if rank == 0:
                for res in group:
                    print(f"[{time.time() - start:6.1f}s] {progress_line(res, cuda)}", flush=True)
        base = {r.width: r for r in results if r.strategy == "ddp" and r.ac == "off" and r.status == "ok"}
        for r in results:
            if r.status == "ok" and r.width in base:
                r.vs_baseline = r.tokens_per_s / base[r.width].tokens_per_s
        prof = None
        if args.profile:
            ok = [r for r in results if r.status == "ok"]
            if ok:
                widest = max(r.width for r in ok)
                target = max((r for r in ok if r.width == widest), key=lambda r: r.tokens_per_s)
                if args.profile_config:  # "strategy,ac": that config of the largest width it ran at
                    strategy, ac = args.profile_config.split(",")
                    named = [r for r in ok if r.strategy == strategy and r.ac == ac]
                    target = max(named, key=lambda r: r.width) if named else target
                if rank == 0:
                    print(f"[{time.time() - start:6.1f}s] profiling width {target.width}, {target.strategy}, "
                          f"AC {target.ac}, {args.profile_steps} steps ...", flush=True)
                try:
                    prof = profile_config(target, model_config(target.width, args), args, device, world, rank)
                except Exception as e:  # noqa: BLE001 - the table is the result; the profile is extra
                    prof = {"error": f"{type(e).__name__}: {e}"}
        if rank == 0:
            Path(result_path).write_text(json.dumps({"results": [asdict(r) for r in results], "peak_tflops": peak,
                                                     "device_name": device_name(device), "profile": prof}))
    finally:
        dist.destroy_process_group()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux: the core count alone
        lines = []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    return f"CPU: {model}, {os.cpu_count()} cores" if model else f"CPU, {os.cpu_count()} cores"


# -- report ------------------------------------------------------------------------------------
def fmt(x: float | None, spec: str = ".3g") -> str:
    return "" if x is None else format(x, spec)


def fmt_params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def progress_line(r: Result, cuda: bool) -> str:
    head = f"width {r.width} ({r.layers}L, {r.heads}h), {r.strategy}, AC {r.ac}:"
    if r.status != "ok":
        return f"{head} {r.status} (wall {r.wall_s:.1f} s)"
    rate = f"{r.tflops_per_device:.1f} TFLOP/s" if cuda else f"{r.tflops_per_device * 1e3:.2f} GFLOP/s"
    mfu = f", MFU {r.mfu:.1%}" if r.mfu is not None else ""
    return (f"{head} {fmt_params(r.params)} params, {r.step_s * 1e3:.0f} ms/step, {r.tokens_per_s:.0f} tokens/s, "
            f"{rate}{mfu}, mem {fmt(r.peak_mem_gb)} GB (wall {r.wall_s:.1f} s)")


def table(results: list[Result], cuda: bool) -> str:
    rate = "TFLOP/s per GPU" if cuda else "GFLOP/s per process"
    mem = "peak mem GB (max_memory_allocated)" if cuda else "peak RSS GB over start"
    lines = [f"| width | layers x heads, ffn | params | strategy | AC | tokens/step | step ms | tokens/s | {rate} "
             f"| MFU | {mem} | vs DDP, AC off |",
             "|---:|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        shape = f"{r.layers} x {r.heads}, {r.ffn}"
        if r.status != "ok":
            mem_s = fmt(r.peak_mem_gb, ".2f") if r.status == "OOM" else ""
            lines.append(f"| {r.width} | {shape} | {fmt_params(r.params) if r.params else ''} | {r.strategy} | {r.ac} "
                         f"| {r.tokens_per_step} | {r.status} | | | | {mem_s} | |")
            continue
        flops = r.tflops_per_device if cuda else r.tflops_per_device * 1e3
        mfu = f"{r.mfu:.1%}" if r.mfu is not None else "n/a"
        lines.append(f"| {r.width} | {shape} | {fmt_params(r.params)} | {r.strategy} | {r.ac} | {r.tokens_per_step} "
                     f"| {r.step_s * 1e3:.1f} | {r.tokens_per_s:.0f} | {flops:.3g} | {mfu} "
                     f"| {fmt(r.peak_mem_gb, '.2f')} | {fmt(r.vs_baseline, '.2f')}{'x' if r.vs_baseline else ''} |")
    return "\n".join(lines)


def profile_table(p: dict) -> str:
    if "error" in p:
        return f"profile failed: {p['error']}"
    lines = [f"Profile of {p['config']}, {p['steps']} steps, {p['step_ms_profiled']:.1f} ms/step under the profiler "
             f"({p['unit']} by category):", "", "| category | ms | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['ms']:.1f} | {v['frac']:.1%} |" for k, v in p["categories"].items()]
    if "idle_frac" in p:
        lines += ["", f"wall {p['wall_ms']:.0f} ms, kernels {p['kernel_ms']:.0f} ms, GPU busy {p['busy_ms']:.0f} ms "
                      f"(compute kernels alone {p['compute_busy_ms']:.0f} ms): idle {p['idle_frac']:.1%} of the wall"]
    lines += ["", "Top kernels / ops:", ""] + [f"- {t['ms']:.1f} ms [{t['category']}] {t['name']}" for t in p["top"][:10]]
    return "\n".join(lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--procs", type=int, help="processes (default: CPU 2, CUDA one per GPU)")
    ap.add_argument("--threads", type=int, help="torch threads per CPU process (default: cores / procs)")
    ap.add_argument("--quick", action="store_true", help="CPU check: widths 32,64, 2 layers, 2 steps (< 60 s)")
    ap.add_argument("--widths", help=f"comma-separated (CPU {CPU_DEFAULTS['widths']}; GPU {GPU_DEFAULTS['widths']})")
    ap.add_argument("--layers", type=int, help="blocks at every width (CPU 4, GPU 8)")
    ap.add_argument("--head-dim", type=int, help="heads = width / head-dim (CPU 32, GPU 128)")
    ap.add_argument("--latent", help="C,T,H,W of each sample's latents (CPU 8,4,16,16; GPU 16,8,64,64)")
    ap.add_argument("--batch", type=int, help="samples per process per step (CPU 2, GPU 1)")
    ap.add_argument("--text-len", type=int, help="text tokens per sample (CPU 16, GPU 256)")
    ap.add_argument("--text-dim", type=int, help="text embedding width (CPU 64 = tiny, GPU 4096 = moviegen)")
    ap.add_argument("--strategies", default="ddp,fsdp", help="of ddp, fsdp (default both)")
    ap.add_argument("--ac", default="off,full", help="activation checkpointing settings: off, full, k (every k-th)")
    ap.add_argument("--compile", action="store_true", help="ParallelismSpec(compile=True): torch.compile per block")
    ap.add_argument("--precision", choices=("bf16", "fp32"), help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--warmup", type=int, help="untimed steps per config (CPU 2, GPU 3)")
    ap.add_argument("--steps", type=int, help="timed steps per config and round (CPU 4, GPU 10)")
    ap.add_argument("--rounds", type=int, help="times each width's configs run, interleaved; the step time is the "
                                               "best round's median step (CPU 3, GPU 1)")
    ap.add_argument("--max-seconds", type=float, help="stop growing widths once a config took longer (CPU 120, GPU 60)")
    ap.add_argument("--budget-s", type=float, help="start no config expected to end after this many seconds "
                                                   "from start (CPU 900, GPU 330)")
    ap.add_argument("--peak-tflops", type=float, help="the MFU denominator (default: dense bf16 peak by GPU name)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler pass on the largest width's fastest config")
    ap.add_argument("--profile-steps", type=int, default=3)
    ap.add_argument("--profile-config", help="strategy,ac to profile instead, e.g. fsdp,off (its largest width)")
    ap.add_argument("--json", help="write the raw numbers here")
    args = ap.parse_args(argv)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU visible")
    cuda = args.device == "cuda"
    defaults = QUICK if args.quick else GPU_DEFAULTS if cuda else CPU_DEFAULTS
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    if args.precision == "bf16" and not cuda:
        raise SystemExit("--precision bf16 is CUDA only (training/loop.py autocasts on CUDA; a CPU run stays fp32)")
    if args.procs is None:
        args.procs = torch.cuda.device_count() if cuda else 2
    if cuda and args.procs > torch.cuda.device_count():
        raise SystemExit(f"--procs {args.procs}: only {torch.cuda.device_count()} GPU(s)")
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.procs)
    args.width_list = [int(w) for w in str(args.widths).split(",")]
    args.strategy_list = [s.strip() for s in args.strategies.split(",")]
    if set(args.strategy_list) - {"ddp", "fsdp"}:
        raise SystemExit("--strategies: ddp and/or fsdp (hsdp needs several groups of GPUs)")
    args.ac_list = [a.strip() for a in args.ac.split(",")]
    for a in args.ac_list:
        ParallelismSpec(activation_checkpointing=a)  # validated as a stage's would be
    args.latent_shape = tuple(int(x) for x in str(args.latent).split(","))
    if len(args.latent_shape) != 4:
        raise SystemExit("--latent: C,T,H,W")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cuda = args.device == "cuda"
    import torch.multiprocessing as mp

    start = time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="reelflow-mfu-") as d:
        path = str(Path(d) / "results.json")
        print(f"{args.procs} process(es) on {args.device} ({'nccl' if cuda else 'gloo'}), {args.precision}; widths "
              f"{args.width_list}, {args.layers} layers, head dim {args.head_dim}; latents {args.latent_shape} x "
              f"batch {args.batch} per process; {args.warmup} warm-up + {args.steps} timed steps, "
              f"{args.rounds} round(s)", flush=True)
        mp.spawn(worker, args=(args.procs, free_port(), args, path, start), nprocs=args.procs, join=True)
        raw = json.loads(Path(path).read_text())
    results = [Result(**r) for r in raw["results"]]
    total = time.time() - T0
    load_after = os.getloadavg()
    cfg0 = model_config(args.width_list[0], args)
    n_tok = tokens_per_sample(cfg0, args.latent_shape)
    print()
    print(f"device: {raw['device_name']}; {args.procs} process(es)"
          + (f", {args.threads} torch thread(s) each" if not cuda else "")
          + f"; peak {raw['peak_tflops'] or 'n/a'} TFLOP/s (dense bf16); load average (1, 5, 15 min) "
          f"{', '.join(f'{x:.2f}' for x in load_before)} before, {', '.join(f'{x:.2f}' for x in load_after)} after")
    print(f"per sample: latents {args.latent_shape} -> {n_tok} tokens (patch 1x2x2), {args.text_len} text tokens "
          f"of dim {args.text_dim}; batch {args.batch} per process; {args.precision}"
          + ("; compile" if args.compile else ""))
    print()
    print(table(results, cuda))
    print()
    if raw.get("profile"):
        print(profile_table(raw["profile"]))
        print()
    print(f"model FLOPs = matmuls + attention, fwd x 3 (see the docstring); MFU over the dense bf16 peak; "
          f"vs DDP, AC off: tokens/s over that config's at the same width, this run. Total {total:.0f} s.")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": {k: v for k, v in vars(args).items()}, "device_name": raw["device_name"],
            "peak_tflops": raw["peak_tflops"], "tokens_per_sample": n_tok, "total_s": total,
            "load_before": load_before, "load_after": load_after,
            "results": raw["results"], "profile": raw.get("profile")}, indent=1, default=str))
        print(f"raw numbers: {args.json}")


if __name__ == "__main__":
    main()
