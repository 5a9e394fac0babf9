"""The progressive training schedule as config: an ordered list of stages, each training one model
on one kind of data at one resolution, each starting from the previous stage's checkpoint.

Movie Gen (arXiv 2410.13720) trains the temporal autoencoder first, then the video model
256 px text-to-image -> 256 px joint image+video -> 768 px joint image+video, and the audio model
conditioned on video. `training/schedules/moviegen.yaml` carries the published figures;
`tiny.yaml` is the same shape at CPU scale for tests and demos.

A schedule is YAML validated by pydantic (`extra=forbid`): a typo is an error, not a silent default.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEDULES_DIR = Path(__file__).with_name("schedules")
MODEL_SIZES = ("tiny", "small", "moviegen")


class ScheduleError(ValueError):
    """The schedule file is missing, not YAML, or not a valid schedule."""


# Metrics a stage's evaluation reports (training/eval.py), which `expect` may bound.
EVAL_METRICS = ("present", "colour", "shape", "direction", "sync_ok", "silence_ok", "sync_error_ms",
                "v2a_sync_ok", "v2a_silence_ok", "v2a_sync_error_ms", "tae_psnr", "tae_psnr_first_frame",
                "tae_psnr_later_frames", "tae_ssim",
                "tae_object_present", "tae_object_colour", "tae_object_shape", "tae_object_direction",
                "clip_score")


class MetricBound(BaseModel):
    """``min <= value <= max`` for one evaluation metric (either bound optional)."""

    model_config = ConfigDict(extra="forbid")

    min: float | None = None
    max: float | None = None


class EvalSpec(BaseModel):
    """Evaluation after every stage: the stage's model samples the prompt set and is measured."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    prompts: str | None = Field(None, description="Prompt set (YAML/JSONL); default: the bundled shapes probe.")
    max_prompts: int | None = Field(None, ge=1, description="Evaluate the first N prompts only (CPU-sized runs).")
    seeds: int = Field(1, ge=1)
    steps: int | None = Field(None, ge=1, description="Sampler steps; default: the model's.")
    clip_checkpoint: str | None = Field(None, description=(
        "open_clip weights (a state-dict file or a local open_clip model directory; path or s3://): each "
        "sample then gets clip_score, its prompt-frames CLIP similarity. Unset: no clip_score at all."))
    clip_model: str | None = Field(None, description="open_clip architecture of a clip_checkpoint file, e.g. ViT-B-32.")
    clip_model_config: str | None = Field(None, description="open_clip model-config JSON for an architecture "
                                                            "open_clip does not build in (its file stem is clip_model).")

    @model_validator(mode="after")
    def _clip(self) -> EvalSpec:
        if not self.clip_checkpoint and (self.clip_model or self.clip_model_config):
            # a half-configured CLIP would otherwise be silently off
            raise ValueError("eval: clip_model / clip_model_config are set but clip_checkpoint is not")
        return self


class ParallelismSpec(BaseModel):
    """How a stage's trained module is spread over its Ray Train workers (training/parallel.py).

    - ``ddp``: every worker holds the whole model, gradients and optimizer state; gradients are
      all-reduced (fits while params x 16 bytes + activations fit one device).
    - ``fsdp``: FSDP2 ``fully_shard`` on every transformer block and on the root: parameters,
      gradients and AdamW state are sharded over all workers, each block gathered only while it
      runs (bf16 params / fp32 reduce on GPU). Movie Gen trains its 30B model sharded.
    - ``hsdp``: ``replicate`` groups of ``num_workers / replicate`` workers; shard inside a group
      (one node's fast links), replicate across groups (all-reduce between nodes).
    """

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["ddp", "fsdp", "hsdp"] = "ddp"
    replicate: int | None = Field(None, ge=1, description="hsdp: replica groups (num_workers must divide by it).")
    activation_checkpointing: Literal["off", "full"] | int = Field("off", description=(
        "Recompute block activations in the backward pass instead of keeping them: 'off', 'full' (every "
        "block), or k (every k-th block, k >= 1). Trades ~1/3 more compute for most of the activation memory."))
    compile: bool = Field(False, description="torch.compile each transformer block (GPU; slow to start on CPU).")

    @field_validator("activation_checkpointing")
    @classmethod
    def _ac(cls, v):
        if isinstance(v, int) and not isinstance(v, bool) and v < 1:
            raise ValueError("activation_checkpointing: every k-th block needs k >= 1")
        return v

    @model_validator(mode="after")
    def _replicate(self) -> ParallelismSpec:
        if self.strategy == "hsdp" and self.replicate is None:
            raise ValueError("parallelism: hsdp needs replicate (the number of replica groups)")
        if self.strategy != "hsdp" and self.replicate is not None:
            raise ValueError(f"parallelism: replicate applies to hsdp only (strategy is {self.strategy})")
        return self

    def checkpoint_every(self) -> int:
        """Every how many blocks are recomputed (0: none)."""
        if self.activation_checkpointing == "off":
            return 0
        return 1 if self.activation_checkpointing == "full" else int(self.activation_checkpointing)


class StageSpec(BaseModel):
    """One stage of the schedule."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Unique, path-safe stage name, e.g. t2i_256.")
    model: Literal["tae", "video", "audio"] = Field(description="Which model this stage trains; the others stay frozen.")
    data: Literal["image", "video", "joint"] = Field(
        description="image: single frames; video: clips; joint: both, `image_ratio` of the batches being images.")
    resolution: int = Field(gt=0, description="Nominal size in px: a bucket of aspect a:b gets w x h ~ resolution^2 "
                                              "with w/h = a/b, rounded to the model's spatial multiple.")
    frames: int = Field(1, ge=1, description="Pixel frames per video sample: 1 + r*k for a TAE with r x temporal "
                                             "compression (Movie Gen: 256 frames = 32 latents at 8x).")
    fps: float = Field(16.0, gt=0, description="Video samples are resampled to this rate (Movie Gen trains at >= 16 fps).")
    image_ratio: float = Field(0.0, ge=0.0, le=1.0, description="Share of image batches in a joint stage.")
    window: Literal["random", "start"] = Field("random", description=(
        "Where a video sample's frames start in its clip: 'random' (a fresh offset per epoch, the usual "
        "temporal crop) or 'start' (the first frame: for captions that say how a clip begins, e.g. the "
        "shapes' 'moves right', which a crop after the first bounce contradicts)."))
    source_caption_ratio: float = Field(0.0, ge=0.0, le=1.0, description=(
        "Share of training samples captioned with their source's own words (manifest description, else "
        "title) instead of the assembled caption. DALL-E 3 and SD3 blend original with synthetic captions "
        "so the model follows short human prompts as well as the captioner's long ones; validation always "
        "uses the caption."))
    latents: bool = Field(False, description=(
        "Train the video batches on latents precomputed by the frozen TAE (training/latents.py: the train "
        "flow encodes them before the stage, `reelflow latents` on its own) instead of decoding and encoding "
        "clips every step. Video-model stages with video data and window: start only (a fixed sample is "
        "the same latents every epoch); image batches of a joint stage still encode on the fly."))
    global_batch_size: int = Field(gt=0, description="Samples per step across all workers.")
    lr: float = Field(gt=0, description="Peak learning rate (AdamW).")
    final_lr: float | None = Field(None, ge=0, description="Cosine-decay target; default: lr (constant after warm-up).")
    warmup_steps: int = Field(0, ge=0)
    iterations: int = Field(gt=0, description="Optimizer steps in this stage.")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    init: str = Field("previous", description="'previous' (the stage before's checkpoint), 'scratch', or a path to a "
                                              "reelflow generation checkpoint.")
    eval_every: int = Field(0, ge=0, description="Steps between validation passes (0: only at the end).")
    checkpoint_every: int = Field(0, ge=0, description="Steps between resumable checkpoints (0: only at the end).")
    log_every: int = Field(10, gt=0, description="Steps between metric rows.")
    val_batches: int = Field(4, ge=0, description="Validation batches per pass (fixed noise and t: comparable across passes).")
    parallelism: ParallelismSpec = Field(default_factory=ParallelismSpec, description=(
        "ddp (default), fsdp or hsdp, activation checkpointing and torch.compile for this stage."))
    expect: dict[str, MetricBound] = Field(default_factory=dict, description=(
        "A learning gate: evaluation metrics the stage must reach, e.g. {colour: {min: 0.9}}; a stage that "
        "ends outside them stops the schedule (exit 3)."))

    @field_validator("name")
    @classmethod
    def _path_safe(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "_-" for c in v):
            raise ValueError(f"stage name {v!r} must be letters, digits, '_' or '-' (it becomes a directory)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> StageSpec:
        if self.data == "image" and self.frames != 1:
            raise ValueError(f"stage {self.name}: an image stage has frames: 1")
        if self.data == "joint" and not 0 < self.image_ratio < 1:
            raise ValueError(f"stage {self.name}: a joint stage needs 0 < image_ratio < 1")
        if self.data != "joint" and self.image_ratio:
            raise ValueError(f"stage {self.name}: image_ratio applies to joint stages only")
        if self.model == "audio" and self.data != "video":
            raise ValueError(f"stage {self.name}: the audio model trains on video (with its audio)")
        if self.latents:
            if problem := self.latents_problem():
                raise ValueError(f"stage {self.name}: latents: true: {problem}")
            if self.init == "scratch":
                raise ValueError(f"stage {self.name}: latents: true needs a trained TAE to encode with: init "
                                 "'previous' or a checkpoint path, not 'scratch'")
        if self.warmup_steps > self.iterations:
            raise ValueError(f"stage {self.name}: warmup_steps exceeds iterations")
        unknown = sorted(set(self.expect) - set(EVAL_METRICS))
        if unknown:
            raise ValueError(f"stage {self.name}: expect names unknown metric(s) {unknown}; known: {list(EVAL_METRICS)}")
        return self


    def latents_problem(self) -> str | None:
        """Why this stage's video samples cannot be precomputed as latents (None: they can): only the
        video model on video or joint data, from a fixed window, sees the same pixels every epoch."""
        if self.model != "video" or self.data == "image":
            return (f"latents are for video-model stages on video or joint data (this one trains the {self.model} "
                    f"model on {self.data} data)")
        if self.window != "start":
            return (f"window: {self.window} starts its samples at a new random frame every epoch, which fixed "
                    "latents cannot stand for, so it needs window: start")
        return None
    def lr_at(self, step: int) -> float:
        """Linear warm-up to `lr`, then cosine decay to `final_lr` (Movie Gen's 768 px stage
        decays 6e-5 -> 1e-5) or constant when `final_lr` is unset."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.final_lr is None:
            return self.lr
        span = max(1, self.iterations - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.final_lr + 0.5 * (self.lr - self.final_lr) * (1 + math.cos(math.pi * progress))


class Schedule(BaseModel):
    """A whole progressive run."""

    model_config = ConfigDict(extra="forbid")

    model_size: Literal["tiny", "small", "moviegen"] = Field("tiny", description="models/configs.py size.")
    with_audio: bool = Field(True, description="Build the audio model (needed by an audio stage).")
    text_path: str | None = Field(None, description="Local text encoder for the moviegen size (T5/UL2 by path).")
    num_workers: int = Field(1, ge=1, description="Ray Train workers per stage (data parallel).")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast on GPU (Movie Gen trains in bf16).")
    seed: int = 0
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of clips held out for validation loss.")
    buckets: list[str] | None = Field(None, min_length=1, description=(
        "Aspect buckets to train on (e.g. ['1x1']); default: every bucket of the dataset. Each bucket is "
        "batched on its own, so a handful of clips in other buckets, up-weighted by concept balancing, "
        "can take a large share of the steps."))
    max_failures: int = Field(1, ge=0, description="Worker-group restarts per stage, each from the latest checkpoint.")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Evaluation of every stage's model (training/eval.py).")
    stages: list[StageSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _stages(self) -> Schedule:
        names = [s.name for s in self.stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate stage names: {dup}")
        if self.stages[0].init == "previous":
            raise ValueError(f"the first stage ({self.stages[0].name}) has no previous stage: use init 'scratch' or a checkpoint path")
        for s in self.stages:
            if s.global_batch_size % self.num_workers:
                raise ValueError(f"stage {s.name}: global_batch_size {s.global_batch_size} is not divisible by "
                                 f"num_workers {self.num_workers}")
            par = s.parallelism
            if par.strategy == "hsdp" and self.num_workers % par.replicate:
                raise ValueError(f"stage {s.name}: hsdp replicate {par.replicate} does not divide num_workers "
                                 f"{self.num_workers}")
            if s.model == "audio" and not self.with_audio:
                raise ValueError(f"stage {s.name} trains the audio model but with_audio is false")
        clip_gated = [s.name for s in self.stages if "clip_score" in s.expect]
        if clip_gated and not (self.eval.enabled and self.eval.clip_checkpoint):
            raise ValueError(f"stage(s) {clip_gated} expect clip_score, which needs eval.clip_checkpoint "
                             "(and evaluation enabled)")
        if self.model_size == "moviegen" and not self.text_path:
            raise ValueError("the moviegen size needs text_path (a local T5/UL2 encoder)")
        return self

    def per_worker_batch(self, stage: StageSpec) -> int:
        return stage.global_batch_size // self.num_workers

    def stage_dir_name(self, index: int) -> str:
        return f"{index:02d}_{self.stages[index].name}"


def load_schedule(path: str | Path | None = None) -> Schedule:
    """A schedule from YAML; a bare name (`tiny`, `moviegen`) picks a bundled one."""
    if path is None:
        path = "tiny"
    p = Path(path)
    if not p.suffix and not p.exists():
        p = SCHEDULES_DIR / f"{path}.yaml"
    if not p.is_file():
        bundled = sorted(f.stem for f in SCHEDULES_DIR.glob("*.yaml"))
        raise ScheduleError(f"schedule not found: {path} (bundled: {bundled})")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ScheduleError(f"{p}: not valid YAML: {e}") from e
    return schedule_from_dict(raw or {}, origin=str(p))


def schedule_from_dict(raw: dict, origin: str = "<schedule>") -> Schedule:
    try:
        return Schedule.model_validate(raw)
    except ValidationError as e:
        lines = [f"{'.'.join(map(str, err['loc'])) or '(top)'}: {err['msg']}" for err in e.errors()]
        raise ScheduleError(f"{origin}: invalid schedule:\n  " + "\n  ".join(lines)) from e
