"""The per-worker training loop of one stage, run by Ray Train's TorchTrainer on every worker.

nanoGPT-shaped: build the models, wrap the trained one for data parallelism, then
`for step in range(start, iterations)`: batch -> loss -> backward -> clip -> AdamW step, with a
metric row every `log_every` steps, a validation pass every `eval_every`, and a resumable
checkpoint every `checkpoint_every` and at the end.

The trained module is wrapped as the stage's `parallelism:` says (training/parallel.py: DDP, or
FSDP2/HSDP sharding, activation checkpointing, compile).

Resuming is exact: a checkpoint (training/train_state.py, a torch.distributed.checkpoint
directory, sharded under FSDP) holds the trained module, the optimizer, the step, how many
batches of each kind were consumed (the data plan skips them without decoding), each rank's RNG
state and the metric rows so far; the noise of step s is drawn from a generator seeded by
(seed, rank, s). Ray Train hands the latest checkpoint back after a worker failure (FailureConfig)
and to a rerun of the same stage (same storage path and name), at the same or another worker count.

The last checkpoint of a stage also holds `model.pt`, a full reelflow generation checkpoint
(training/checkpoint.py) that the next stage starts from and `reelflow generate` reads.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from reelflow.models.configs import ModelConfig
from reelflow.training.captions import FPS_TOKEN
from reelflow.training.checkpoint import save_checkpoint
from reelflow.training.data import Batch, BatchSpec, DataError, Prefetcher, ShardDataset, bucket_size, eligible_clips
from reelflow.training.handoff import Grid, initial_models, spatial_multiple
from reelflow.training.parallel import clip_grad_norm, is_sharded, parallelize, unwrap
from reelflow.training.schedule import Schedule, StageSpec, schedule_from_dict
from reelflow.training.steps import (
    audio_frames,
    audio_step,
    check_audio_span,
    encode_latents,
    tae_step,
    trainable_module,
    video_step,
)
from reelflow.training.throughput import StepFlops, bf16_peak_tflops
from reelflow.training.train_state import (
    LoopPosition,
    full_module_state,
    generation_parts,
    load_train_state,
    save_train_state,
)
from reelflow.training.val_metrics import ValSums, format_val

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.jsonl"
LATENT_SCALE_BATCHES = 4  # batches over which the TAE stage measures latent std
PREFETCH_BATCHES = 2  # batches decoded ahead in a background thread while the current one trains


def prefetch_depth(device: torch.device, depth: int = PREFETCH_BATCHES) -> int:
    """Decode ahead in a thread only where it has a core of its own: on a GPU, or when torch's
    intra-op threads leave a CPU free. Where torch already uses every core, the decoding thread
    competes with it (and for the GIL, which a small model's many short ops need): measured on 2
    cores with 2 torch threads, a tiny video stage ran 1.75x slower with the prefetch thread
    (600 steps: 48.7 s against 27.7 s decoding inline) and the TAE stage 1.25x slower."""
    if device.type != "cpu":
        return depth
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return depth if cores > torch.get_num_threads() else 0


@dataclass
class WorkerConfig:
    """Everything a worker needs, as plain data (it travels to the Ray Train workers)."""

    schedule: dict
    stage_index: int
    dataset: str
    init_checkpoint: str | None = None
    video_trained: bool = False
    grid: dict | None = None  # Grid fields for video stages
    progress_uri: str | None = None  # rank 0 overwrites it with the latest metric row (the driver polls it)
    # A latent output (training/latents.py) holding this stage's video latents (stages with latents: true)
    latents: str | None = None
    # Testing fault tolerance: each {"step", "marker", "kill"} fails once at its step (the marker
    # file makes it once): raise, or with kill the worker process dies (SIGKILL) as a lost node would.
    faults: list[dict] = field(default_factory=list)

    @property
    def stage(self) -> StageSpec:
        return self.parsed_schedule.stages[self.stage_index]

    @property
    def parsed_schedule(self) -> Schedule:
        return schedule_from_dict(self.schedule)


@dataclass
class LoopState(LoopPosition):
    """Where the loop stands (saved with the sharded state) and the metric rows so far."""

    metrics: list[dict] = field(default_factory=list)


def batch_specs(schedule: Schedule, stage: StageSpec, config: ModelConfig, split: str,
                batch_size: int | None = None) -> dict[str, BatchSpec]:
    """The data a stage reads: image and/or video specs (the audio stage adds audio)."""
    kinds = {"image": ["image"], "video": ["video"], "joint": ["image", "video"]}[stage.data]
    bs = batch_size or schedule.per_worker_batch(stage)
    audio_rate = config.audio.sample_rate if stage.model == "audio" else None
    return {
        kind: BatchSpec(
            kind=kind, resolution=stage.resolution, multiple=spatial_multiple(config),
            frames=1 if kind == "image" else stage.frames, fps=stage.fps, batch_size=bs,
            audio_sample_rate=audio_rate, split=split, val_fraction=schedule.val_fraction,
            seed=schedule.seed, weighted=split == "train", window=stage.window,
            source_caption_ratio=stage.source_caption_ratio,
            buckets=tuple(schedule.buckets) if schedule.buckets else None,
        )
        for kind in kinds
    }


def kind_at(stage: StageSpec, seed: int, step: int) -> str:
    """Image or video batch at `step`: the same on every worker, and on a resumed run."""
    if stage.data != "joint":
        return "image" if stage.data == "image" else "video"
    return "image" if random.Random(f"{seed}:{stage.name}:{step}").random() < stage.image_ratio else "video"


LATENT_CACHE_BYTES = 1 << 30


class LatentCache:
    """Latents of fixed-window samples by (key, pixel shape (T, H, W)), up to a byte budget (then
    it stops adding; nothing is ever evicted, so `covers` stays true once it is)."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self.items: dict[tuple, torch.Tensor] = {}
        self.hits = self.misses = 0

    def covers(self, keys: list[str], shape: tuple[int, int, int]) -> bool:
        """Every key's latents are held: its pixels need not be decoded (safe from another thread)."""
        return all((k, shape) in self.items for k in keys)

    def lookup(self, keys: list[str], shape: tuple[int, int, int]) -> torch.Tensor:
        self.hits += len(keys)
        return torch.stack([self.items[(k, shape)] for k in keys])

    def encode(self, keys: list[str], pixels: torch.Tensor, encode) -> torch.Tensor:
        shape = tuple(pixels.shape[2:])
        found = [self.items.get((k, shape)) for k in keys]
        todo = [i for i, z in enumerate(found) if z is None]
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        if todo:
            fresh = encode(pixels[todo])
            for j, i in enumerate(todo):
                z = fresh[j].detach()
                found[i] = z
                if self.bytes + z.numel() * z.element_size() <= self.max_bytes:
                    self.items[(keys[i], shape)] = z
                    self.bytes += z.numel() * z.element_size()
        return torch.stack(found)


def stage_models(models, kind: str) -> list[nn.Module]:
    """The models a stage's step runs, the only ones placed on its device: at Movie Gen's size the
    idle audio model of a video stage is 50 GB a GPU, the idle video model of the audio stage 117 GB
    (training/plan.py counts the same)."""
    if kind == "tae":
        return [models.tae]
    if kind == "video":
        return [models.tae, models.text, models.video]
    needs_tae = models.config.audio is not None and models.config.audio.video_features == "latents"
    return [m for m in (models.tae if needs_tae else None, models.text, models.audio) if m is not None]


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + rank * 7919 + step) % (2**63))


class StageRunner:
    """One worker's view of a stage: models, trained module, optimizer and data."""

    def __init__(self, cfg: WorkerConfig, rank: int = 0, world_size: int = 1,
                 device: torch.device | None = None):
        self.cfg = cfg
        self.schedule = cfg.parsed_schedule
        self.stage = cfg.stage
        self.rank, self.world_size = rank, world_size
        self.device = device or torch.device("cpu")
        torch.manual_seed(self.schedule.seed)  # every rank builds identical fresh weights
        grid = Grid(**cfg.grid) if cfg.grid else None
        self.models = initial_models(self.schedule, self.stage, cfg.init_checkpoint, cfg.video_trained, grid)
        for model in stage_models(self.models, self.stage.model):
            model.to(self.device)
        self.module = trainable_module(self.models, self.stage.model)
        self.mel = None
        if self.stage.model == "audio":
            from reelflow.models.audio_model import LogMel

            check_audio_span(self.models, self.stage.frames, self.stage.fps)
            self.mel = LogMel(self.models.config.audio).to(self.device)
        self.specs = batch_specs(self.schedule, self.stage, self.models.config, "train")
        # One reader per kind and one for validation: each prefetch thread owns its reader (and
        # its decode cache), so no two threads share one.
        self.data = {kind: ShardDataset(cfg.dataset) for kind in self.specs}
        self.val_data = ShardDataset(cfg.dataset)
        self.iters: dict[str, object] = {}
        self.state = LoopState()
        # The TAE is frozen after its stage, and a video sample whose window is fixed ('start')
        # is the same pixels every epoch: encode it once. On 2 CPU cores encoding a 64 px batch
        # costs more than the transformer's step, so this is most of the tiny video stages' time.
        self.latent_cache: LatentCache | None = (
            LatentCache(LATENT_CACHE_BYTES) if self.stage.model == "video" and self.stage.window == "start" else None)
        # A stage with latents: true reads them precomputed (training/latents.py), first epoch included:
        # its video batches are never decoded. A clip missing there is encoded on the fly, as above.
        self.precomputed = None
        if cfg.latents and "video" in self.specs:
            from reelflow.training.latents import LatentSpec, PrecomputedLatents

            fallback = self.latent_cache or LatentCache(LATENT_CACHE_BYTES)
            self.precomputed = PrecomputedLatents(cfg.latents, fallback=fallback)
            self.precomputed.check(self.models.tae, self.models.config.tae.latent_scale,
                                   LatentSpec.of(self.specs["video"]), self.stage.name)
            self.latent_cache = self.precomputed
        self.flops = StepFlops(self.module)  # counted before any sharding: whole-model sizes

    def tokens_per_sample(self, kind: str, bucket: str) -> int:
        """Sequence positions the trained transformer sees per sample (0 for the TAE)."""
        spec, config = self.specs[kind], self.models.config
        if self.stage.model == "audio":
            return audio_frames(config.audio, spec.frames, spec.fps)
        if self.stage.model != "video":
            return 0
        h, w = bucket_size(bucket, spec.resolution, spec.multiple)
        s = config.tae.spatial_compression
        pt, ph, pw = config.video.patch_size
        return (config.tae.latent_frames(spec.frames) // pt) * (h // s // ph) * (w // s // pw)

    # -- optimisation ------------------------------------------------------------------------
    def make_optimizer(self, module: nn.Module) -> torch.optim.Optimizer:
        params = [p for p in module.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]  # no weight decay on norms, biases, gains
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": self.stage.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.stage.lr, betas=(0.9, 0.95))

    def next_batch(self, kind: str) -> Batch:
        if kind not in self.iters:
            spec = self.specs[kind]
            have = None
            if self.latent_cache is not None and spec.kind == "video":
                cache = self.latent_cache  # a batch whose latents are all cached is not decoded again
                have = lambda pb, size: cache.covers(pb.keys, (spec.frames, *size))  # noqa: E731
            batches = self.data[kind].batches(spec, self.rank, self.world_size,
                                              start_batch=self.state.consumed[kind], have=have)
            depth = prefetch_depth(self.device)
            self.iters[kind] = Prefetcher(batches, depth=depth) if depth else batches
        batch = next(self.iters[kind])
        # The batch's place in the plan (a batch whose samples all failed to decode is skipped,
        # so counting received batches would fall behind it and a resume would repeat one).
        self.state.consumed[kind] = batch.position + 1 if batch.position is not None else self.state.consumed[kind] + 1
        return batch

    def loss(self, module: nn.Module, batch: Batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if batch.pixels is None:  # the data reader skipped decoding: the latents are cached
            spec = self.specs["video"]
            shape = (spec.frames, *bucket_size(batch.bucket, spec.resolution, spec.multiple))
            latents = self.latent_cache.lookup(batch.keys, shape).to(self.device)
            return video_step(module, self.models, None, batch.captions, generator, latents=latents)
        pixels = batch.pixels.to(self.device, non_blocking=True)
        if self.stage.model == "tae":
            return tae_step(module, self.models, pixels)
        if self.stage.model == "video":
            latents = None
            if self.latent_cache is not None and pixels.shape[2] > 1:  # images start at random frames
                latents = self.latent_cache.encode(batch.keys, pixels, lambda x: encode_latents(self.models, x))
            return video_step(module, self.models, pixels, batch.captions, generator, latents=latents)
        audio = batch.audio.to(self.device)
        return audio_step(module, self.models, pixels, batch.captions, audio, self.mel, generator, self.stage.fps)

    # -- validation ---------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, module: nn.Module) -> dict[str, float]:
        """Mean loss per kind over up to `val_batches` held-out batches, with fixed noise (seeded
        per batch), so passes are comparable along the stage (Movie Gen: validation
        flow-matching loss tracked human judgement). Each worker takes its share; sums are
        all-reduced."""
        module.eval()
        out: dict[str, float] = {}
        specs = batch_specs(self.schedule, self.stage, self.models.config, "val")
        for kind, spec in specs.items():
            batches = iter(())
            buckets: list[str] = []
            if self.stage.val_batches and self.schedule.val_fraction > 0:
                buckets = val_buckets(self.val_data, spec)
                have = None
                if self.precomputed is not None and kind == "video":  # held-out clips were encoded too
                    store = self.precomputed
                    have = lambda pb, size: store.covers(pb.keys, (spec.frames, *size))  # noqa: E731
                try:
                    batches = self.val_data.batches(spec, self.rank, self.world_size, have=have)
                except DataError as e:  # no held-out clip fits this spec: no val loss of this kind
                    log.warning("stage %s: no validation for %s batches: %s", self.stage.name, kind, e)
            sums = ValSums(buckets)
            # Ranks hold different numbers of held-out batches. Under DDP the bare module runs them
            # (DDP's forward would broadcast buffers, a collective the rank without a batch never
            # joins). Under FSDP every forward gathers parameters with all ranks: the ranks agree on
            # the number of forwards first (decoding is local), and a rank that runs out repeats a
            # batch, uncounted.
            sharded = is_sharded(module)
            net = module if sharded else unwrap(module)
            local = list(itertools.islice(batches, self.stage.val_batches))
            target = _all_reduce_max(len(local), self.device) if sharded else len(local)
            filler = local[0] if local else None
            if target > len(local) and filler is None:
                filler = next(iter(self.val_data.batches(spec, 0, 1)))
            # Errors in the loss itself propagate: a broken validation must not pass silently.
            for i in range(target):
                batch = local[i] if i < len(local) else filler
                g = step_generator(self.schedule.seed + 1, 0, i)
                torch.manual_seed(self.schedule.seed + i)  # TAE sampling noise
                losses = self.loss(net, batch, g)
                if i < len(local):
                    key = "recon" if self.stage.model == "tae" else "loss"
                    sums.add(batch.bucket, float(losses[key]), len(batch.keys))
            # One collective per kind on every worker, its length fixed by `buckets` (the same on all).
            sums = sums.reduce(lambda v: _all_reduce_vector(v, self.device))
            out.update(sums.row(kind))
        module.train()
        return out

    # -- checkpoints ----------------------------------------------------------------------------
    def load_state(self, directory: str, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Collective: every rank restores its part (resharded when the worker count changed)."""
        pos = load_train_state(directory, module, optimizer, self.device)
        self.state = LoopState(**vars(pos), metrics=read_metrics(directory))

    def write_checkpoint(self, directory: str, module: nn.Module, optimizer: torch.optim.Optimizer,
                         final: bool) -> None:
        """Collective: every rank writes its shard of the state into its own `directory` (Ray
        Train merges them); rank 0 adds the metric rows and, at the end, the generation checkpoint."""
        st = self.state
        save_train_state(directory, module, optimizer,
                         LoopPosition(step=st.step, consumed=dict(st.consumed), samples=st.samples,
                                      elapsed_s=st.elapsed_s, world_size=self.world_size))
        full = full_module_state(module) if final else None  # gathered from every rank's shard
        if self.rank != 0:
            return
        with open(Path(directory) / METRICS_FILE, "w") as f:
            for row in st.metrics:
                f.write(json.dumps(row) + "\n")
        if final:
            self.record_sample_format()
            save_checkpoint(self.models, Path(directory) / MODEL_FILE, generation_parts(self.stage.model, full))

    def record_sample_format(self) -> None:
        """Write into the checkpoint's config the size, rate and frame count this stage trained
        the video model (or the TAE) on, so the stage's model.pt samples at a grid its positions
        cover: its most common aspect bucket at the stage's resolution. The audio stage keeps what
        the last video stage recorded. A TAE stage records the largest resolution the schedule's video
        stages use it at: it is convolutional, may train smaller than it is used, and is judged (its
        stage evaluation) where it will be used."""
        from collections import Counter

        if self.stage.model == "audio":
            return
        resolution = self.stage.resolution
        if self.stage.model == "tae":
            resolution = max((s.resolution for s in self.schedule.stages if s.model == "video"), default=resolution)
        spec = self.specs.get("video") or next(iter(self.specs.values()))
        clips = eligible_clips(self.data[spec.kind].clips.values(), spec)
        aspect = Counter(c.bucket for c in clips).most_common(1)[0][0] if clips else "1x1"
        h, w = bucket_size(aspect, resolution, spec.multiple)
        sample = self.models.config.sample
        sample.height, sample.width = h, w
        sample.fps = int(round(self.stage.fps)) if spec.kind == "video" else sample.fps
        sample.frames = spec.frames
        # Trained on ``FPS-<n>`` captions (rewritten to this stage's rate): generation prepends the token.
        sample.fps_token = spec.kind == "video" and sum(bool(FPS_TOKEN.match(c.caption)) for c in clips) > len(clips) / 2

    @torch.no_grad()
    def measure_latent_scale(self) -> float:
        """1 / std of the trained TAE's latents on training batches: the generator then works on
        unit-variance latents (as Stable Diffusion's 0.18215)."""
        self.models.tae.eval()
        s1 = s2 = 0.0
        n = 0
        for _ in range(LATENT_SCALE_BATCHES):
            batch = self.next_batch("video" if "video" in self.specs else "image")
            z = self.models.tae.encode(batch.pixels.to(self.device)).double()
            s1, s2, n = s1 + z.sum().item(), s2 + z.pow(2).sum().item(), n + z.numel()
        # the same scale on every worker: moments summed over all of them
        s1, n = _all_reduce_sum(s1, n, self.device)
        s2, _ = _all_reduce_sum(s2, 0, self.device)
        var = s2 / max(n, 1) - (s1 / max(n, 1)) ** 2
        std = math.sqrt(var) if var > 0 else 0.0
        return 1.0 / std if std > 0 and math.isfinite(std) else 1.0


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point (one call per worker)."""
    import ray.train
    import ray.train.torch

    cfg = WorkerConfig(**config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    runner = StageRunner(cfg, rank, world, ray.train.torch.get_device())
    bf16 = runner.schedule.precision == "bf16" and runner.device.type == "cuda"
    # Wrap (shard) first, then build the optimizer over the parameters as wrapped, then restore.
    module = parallelize(runner.module, runner.stage.parallelism, world, runner.device, bf16=bf16).module
    optimizer = runner.make_optimizer(module)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            runner.load_state(d, module, optimizer)
    report = _ray_report
    if cfg.progress_uri and rank == 0:
        report = _with_progress(_ray_report, cfg.progress_uri)
    run_stage_loop(runner, module, optimizer, report=report, faults=cfg.faults)


def _with_progress(report, uri: str):
    """Also publish each metric row where the driver can see it (local or S3 OUTPUT): the CLI's
    progress bar and the flow's logs follow a stage that may run for days."""
    from reelflow.curation.storage import Storage

    storage = Storage()

    def wrapped(row: dict, save) -> None:
        report(row, save)
        try:
            storage.write_bytes(uri, json.dumps(row).encode())
        except Exception as e:  # progress is best effort; training goes on
            log.warning("could not publish progress to %s: %s", uri, e)

    return wrapped


def inject_fault(faults: list[dict], step: int, rank: int) -> None:
    """Testing: fail as `faults` say at `step` (on the fault's `rank` if it names one), once each."""
    for fault in faults:
        marker = fault.get("marker")
        if fault["step"] != step or not marker or os.path.exists(marker):
            continue
        if rank != fault.get("rank", rank):
            continue
        Path(marker).write_text(f"injected fault at step {step} on rank {rank}\n")
        if fault.get("kill"):
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected fault at step {step} (testing fault tolerance)")


def run_stage_loop(runner: StageRunner, module: nn.Module, optimizer: torch.optim.Optimizer, report,
                   faults: list[dict] | None = None) -> None:
    """The loop itself, independent of Ray: `report(metrics, checkpoint_dir | None)` is called on
    every worker at every log step (Ray Train needs the same number of calls on all ranks)."""
    stage, schedule, st = runner.stage, runner.schedule, runner.state
    autocast = _autocast(schedule, runner.device)
    window_loss, window_n, window_samples, window_t0 = 0.0, 0, 0, time.perf_counter()
    data_wait = window_tokens = window_flops = 0.0
    peak = bf16_peak_tflops(runner.device) if schedule.precision == "bf16" else None
    while st.step < stage.iterations:
        step = st.step
        if faults:
            inject_fault(faults, step, runner.rank)
        for group in optimizer.param_groups:
            group["lr"] = stage.lr_at(step)
        t0 = time.perf_counter()
        kind = kind_at(stage, schedule.seed, step)
        batch = runner.next_batch(kind)
        data_wait += time.perf_counter() - t0
        with autocast:
            losses = runner.loss(module, batch, step_generator(schedule.seed, runner.rank, step))
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"stage {stage.name}: loss is {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = None
        if stage.grad_clip:
            grad_norm = clip_grad_norm(module, stage.grad_clip)
        optimizer.step()
        st.step += 1
        n = len(batch.keys)
        window_loss += loss.item() * n
        window_n += n
        window_samples += n
        tokens = runner.tokens_per_sample(kind, batch.bucket)
        window_tokens += n * tokens
        window_flops += runner.flops.of_batch(n, tokens)
        last = st.step == stage.iterations
        if st.step % stage.log_every == 0 or last:
            elapsed = time.perf_counter() - window_t0
            loss_sum, count = _all_reduce_sum(window_loss, window_n, runner.device)
            samples, _ = _all_reduce_sum(float(window_samples), 0, runner.device)
            tokens_sum, _ = _all_reduce_sum(window_tokens, 0, runner.device)
            flops_sum, _ = _all_reduce_sum(window_flops, 0, runner.device)
            st.samples += int(samples)
            st.elapsed_s += elapsed
            row = {"stage": stage.name, "step": st.step, "split": "train", "loss": loss_sum / max(count, 1),
                   "lr": stage.lr_at(step), "samples": st.samples, "samples_per_s": samples / max(elapsed, 1e-9),
                   "data_wait_frac": data_wait / max(elapsed, 1e-9), "grad_norm": grad_norm,
                   "elapsed_s": st.elapsed_s, "kind": stage.model,
                   # transformer stages: sequence positions and model FLOPs (training/throughput.py)
                   "tokens_per_s": tokens_sum / max(elapsed, 1e-9) if tokens_sum else None,
                   "tflops_per_s": flops_sum / max(elapsed, 1e-9) / 1e12 if flops_sum else None,
                   "mfu": (flops_sum / max(elapsed, 1e-9) / 1e12 / (peak * runner.world_size)
                           if flops_sum and peak else None)}
            if stage.model == "tae":
                row["recon"] = float(losses["recon"])
            val = {}
            if last or (stage.eval_every and st.step % stage.eval_every == 0):
                val = runner.validate(module)
                if val:
                    row.update(val)
            if runner.precomputed is not None:  # this worker's counts so far (rank 0's in the metrics)
                row.update(latents_read=runner.precomputed.reads, latents_encoded=runner.precomputed.misses,
                           video_samples_decoded=runner.data["video"].stats.samples_decoded,
                           val_samples_decoded=runner.val_data.stats.samples_decoded)
            st.metrics.append(row)
            if runner.rank == 0:
                vals = f"val {format_val(val)}" if val else ""
                print(f"[{stage.name}] step {st.step}/{stage.iterations} loss {row['loss']:.4f} "
                      f"lr {row['lr']:.2e} {row['samples_per_s']:.1f} samples/s {vals}".rstrip(), flush=True)
            save = last or (stage.checkpoint_every and st.step % stage.checkpoint_every == 0)
            if last and stage.model == "tae":
                runner.models.config.tae.latent_scale = runner.measure_latent_scale()
                row["latent_scale"] = runner.models.config.tae.latent_scale
            report(row, (runner, module, optimizer, last) if save else None)
            window_loss, window_n, window_samples, window_t0, data_wait = 0.0, 0, 0, time.perf_counter(), 0.0
            window_tokens = window_flops = 0.0


def _ray_report(row: dict, save) -> None:
    import ray.train

    metrics = {k: v for k, v in row.items() if v is not None}
    if save is None:
        ray.train.report(metrics)
        return
    runner, module, optimizer, final = save
    with tempfile.TemporaryDirectory() as d:  # every rank: its shard of the state
        runner.write_checkpoint(d, module, optimizer, final)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                         checkpoint_dir_name=f"step_{row['step']:08d}")


def read_metrics(directory: str | Path) -> list[dict]:
    path = Path(directory) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def val_buckets(data: ShardDataset, spec: BatchSpec) -> list[str]:
    """The aspect buckets of ``spec``'s held-out clips, sorted: read from the index with the spec
    alone, so every worker gets the same list whatever batches it is dealt (see ValSums)."""
    return sorted({c.bucket for c in eligible_clips(data.clips.values(), spec)})


def _all_reduce_vector(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over the workers (one all-reduce); as is with one worker."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _all_reduce_max(value: int, device: torch.device) -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _all_reduce_sum(total: float, count: int, device: torch.device) -> tuple[float, int]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return total, count
    t = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t[0]), int(t[1])


def _autocast(schedule: Schedule, device: torch.device):
    import contextlib

    if schedule.precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
