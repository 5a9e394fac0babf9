"""Launch one schedule stage as a Ray Train TorchTrainer job and collect what it produced.

Layout of a training OUTPUT (a local directory or an s3:// prefix):

    OUTPUT/run.json                         schedule + shards of the run (a resume must match)
    OUTPUT/stages/<NN>_<name>/model.pt      generation checkpoint after the stage (the next one starts here)
    OUTPUT/stages/<NN>_<name>/metrics.jsonl metric rows of the stage (train and validation)
    OUTPUT/stages/<NN>_<name>/stage.json    written last: the stage is done
    OUTPUT/_ray/<NN>_<name>/                Ray Train's own storage: resumable checkpoints
    OUTPUT/latents/<NN>_<name>/             a `latents: true` stage's precomputed video latents (training/latents.py)
    OUTPUT/model.pt, metrics.parquet, report.html   after the last stage

A stage whose `stage.json` exists is never run again; one that stopped half-way resumes from
its latest Ray Train checkpoint (Ray Train restores a run with the same storage path and name).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from reelflow.curation import output_tables
from reelflow.curation.storage import S3Config, Storage, is_s3, join, split_s3
from reelflow.training.data import bucket_size
from reelflow.training.handoff import model_config, spatial_multiple, stage_grid
from reelflow.training.latents import LatentsError, LatentSummary, load_tae, read_manifest, run_latents, stage_spec
from reelflow.training.loop import METRICS_FILE, MODEL_FILE, WorkerConfig, read_metrics
from reelflow.training.schedule import Schedule

log = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
PROGRESS_FILE = "progress.json"


@dataclass
class StageOutcome:
    index: int
    name: str
    model: str
    steps: int
    seconds: float
    checkpoint: str  # OUTPUT/stages/<dir>/model.pt
    final_loss: float | None
    val: dict[str, float]
    samples_per_s: float | None
    resumed: bool = False
    skipped: bool = False  # already done by an earlier run


def stage_dir(output: str, schedule: Schedule, index: int) -> str:
    return join(output, "stages", schedule.stage_dir_name(index))


def read_outcome(storage: Storage, output: str, schedule: Schedule, index: int) -> StageOutcome | None:
    uri = join(stage_dir(output, schedule, index), STAGE_FILE)
    if not storage.exists(uri):
        return None
    data = json.loads(storage.read_bytes(uri))
    data["skipped"] = True
    return StageOutcome(**data)


def stage_metrics(storage: Storage, output: str, schedule: Schedule, index: int) -> list[dict]:
    uri = join(stage_dir(output, schedule, index), METRICS_FILE)
    if not storage.exists(uri):
        return []
    return [json.loads(line) for line in storage.read_bytes(uri).decode().splitlines() if line.strip()]


def aspect_buckets(storage: Storage, dataset: str) -> list[str]:
    index = output_tables.read(storage, dataset, output_tables.INDEX, columns=["aspect_bucket"])
    return sorted(set(index.column("aspect_bucket").to_pylist()))


def init_checkpoint(schedule: Schedule, index: int, output: str) -> str | None:
    """The generation checkpoint stage `index` starts from: the previous stage's model.pt, its
    `init` path, or None (scratch)."""
    stage = schedule.stages[index]
    if stage.init == "previous":
        return join(stage_dir(output, schedule, index - 1), MODEL_FILE)
    if stage.init == "scratch":
        return None
    return stage.init


def stage_latents_dir(output: str, schedule: Schedule, index: int) -> str:
    """Where a `latents: true` stage's precomputed latents go (and are read from)."""
    return join(output, "latents", schedule.stage_dir_name(index))


def precompute_latents(schedule: Schedule, index: int, dataset: str, output: str, storage: Storage | None = None,
                       progress: Callable[[int, int], None] | None = None, **kwargs) -> LatentSummary:
    """Encode stage `index`'s video samples with the frozen TAE of the checkpoint the stage starts
    from, into `stage_latents_dir` (resuming; a no-op once complete). The train flow runs it
    before each `latents: true` stage; `kwargs` go to training/latents.py:run_latents."""
    storage = storage or Storage()
    output = output if is_s3(output) else str(Path(output).resolve())
    dataset = dataset if is_s3(dataset) else str(Path(dataset).resolve())
    stage = schedule.stages[index]
    checkpoint = init_checkpoint(schedule, index, output)
    if checkpoint is None:
        raise LatentsError(f"stage {stage.name} starts from scratch: there is no trained TAE to encode latents with")
    config, _ = load_tae(checkpoint, storage)
    spec = stage_spec(schedule, stage, spatial_multiple(config))
    return run_latents(dataset, stage_latents_dir(output, schedule, index), checkpoint, spec, stage=stage,
                       storage=storage, progress=progress, **kwargs)


def worker_config(schedule: Schedule, index: int, dataset: str, output: str, storage: Storage,
                  latents: str | None = None, **testing) -> WorkerConfig:
    """What the workers of stage `index` need: where to start, the latent grid to cover and, for a
    `latents: true` stage, its precomputed latents (`latents`, else `stage_latents_dir`)."""
    stage = schedule.stages[index]
    init = init_checkpoint(schedule, index, output)
    # The video model was trained before if an earlier stage trained it, or a given checkpoint
    # (an explicit init, or the chain leading here) did.
    earlier = schedule.stages[:index]
    chain_start = max((i for i, s in enumerate(earlier) if s.init != "previous"), default=None)
    from_ckpt = chain_start is not None and schedule.stages[chain_start].init not in ("scratch", "previous")
    video_trained = (stage.init not in ("scratch", "previous")
                     or from_ckpt
                     or any(s.model == "video" for s in earlier[chain_start or 0:]))
    grid = None
    if stage.model == "video":
        config = model_config(schedule)
        sizes = [bucket_size(a, stage.resolution, spatial_multiple(config)) for a in aspect_buckets(storage, dataset)]
        grid = asdict(stage_grid(config, stage, sizes))
    if latents and not stage.latents:
        raise LatentsError(f"stage {stage.name} was given latents but does not declare latents: true")
    if stage.latents:
        latents = latents or stage_latents_dir(output, schedule, index)
        latents = latents if is_s3(latents) else str(Path(latents).resolve())
        read_manifest(latents, storage)  # LatentsError now, in the driver, when they are not there
    else:
        latents = None
    return WorkerConfig(schedule=schedule.model_dump(mode="json"), stage_index=index, dataset=dataset,
                        init_checkpoint=init, video_trained=video_trained, grid=grid, latents=latents, **testing)


def run_stage(schedule: Schedule, index: int, dataset: str, output: str, storage: Storage | None = None,
              on_progress: Callable[[dict], None] | None = None, latents: str | None = None,
              **testing) -> StageOutcome:
    """Train stage `index` (resuming it if it stopped half-way) and publish its checkpoint. A
    `latents: true` stage reads its precomputed latents (`precompute_latents` first) from `latents`,
    by default `stage_latents_dir`."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from reelflow.training.loop import train_loop_per_worker

    storage = storage or Storage()
    # Workers run in their own directories: give them absolute local paths.
    output = output if is_s3(output) else str(Path(output).resolve())
    dataset = dataset if is_s3(dataset) else str(Path(dataset).resolve())
    done = read_outcome(storage, output, schedule, index)
    if done is not None:
        return done
    stage = schedule.stages[index]
    name = schedule.stage_dir_name(index)
    config = worker_config(schedule, index, dataset, output, storage, latents=latents, **testing)
    config.progress_uri = join(stage_dir(output, schedule, index), PROGRESS_FILE)
    ray_storage, fs = _ray_storage(output, storage)
    resumed = _has_ray_state(ray_storage, name, fs)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=asdict(config),
        scaling_config=ScalingConfig(num_workers=schedule.num_workers, use_gpu=schedule.use_gpu,
                                     resources_per_worker={"CPU": schedule.cpus_per_worker}),
        run_config=RunConfig(
            name=name,
            storage_path=ray_storage,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=schedule.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": _worker_env(schedule)},
        ),
    )
    t0 = time.perf_counter()
    with _ProgressWatcher(storage, config.progress_uri, on_progress):
        result = trainer.fit()
    seconds = time.perf_counter() - t0
    if result.checkpoint is None:
        raise RuntimeError(f"stage {stage.name} finished without a checkpoint")
    target = stage_dir(output, schedule, index)
    with result.checkpoint.as_directory() as d:
        if not (Path(d) / MODEL_FILE).exists():
            raise RuntimeError(f"stage {stage.name}: the last checkpoint has no {MODEL_FILE}; it did not finish")
        metrics = read_metrics(d)
        storage.upload_file(Path(d) / MODEL_FILE, join(target, MODEL_FILE))
        storage.write_bytes(join(target, METRICS_FILE), "".join(json.dumps(r) + "\n" for r in metrics).encode())
    train_rows = [r for r in metrics if r["split"] == "train"]
    last = train_rows[-1] if train_rows else {}
    val = {k: v for k, v in last.items() if k.startswith("val_loss")}
    rates = [r["samples_per_s"] for r in train_rows if r.get("samples_per_s")]
    outcome = StageOutcome(index=index, name=stage.name, model=stage.model, steps=int(last.get("step", 0)),
                           seconds=seconds, checkpoint=join(target, MODEL_FILE), final_loss=last.get("loss"),
                           val=val, samples_per_s=sum(rates) / len(rates) if rates else None, resumed=resumed)
    storage.write_bytes(join(target, STAGE_FILE), json.dumps(asdict(outcome) | {"skipped": False}, indent=1).encode())
    return outcome


class _ProgressWatcher:
    """Polls the progress file rank 0 rewrites at every log step and hands new rows to a callback."""

    def __init__(self, storage: Storage, uri: str, callback: Callable[[dict], None] | None, every_s: float = 2.0):
        self.storage, self.uri, self.callback, self.every_s = storage, uri, callback, every_s
        self._stop = threading.Event()
        # The callback runs in the caller's context (contextvars): a flow's callback logs through
        # Prefect, whose API address and run are context variables. From a bare thread the first log
        # started Prefect's log worker without them, and with it a second temporary server that
        # received the stage's progress lines (the flow run's own server never saw them).
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._run,), daemon=True, name="train-progress")
        self._last: bytes | None = None

    def __enter__(self) -> _ProgressWatcher:
        if self.callback is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self.callback is not None:
            self._poll()  # the last row

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._poll()

    def _poll(self) -> None:
        try:
            data = self.storage.read_bytes(self.uri)
        except Exception:  # not written yet
            return
        if data != self._last:
            self._last = data
            try:
                self.callback(json.loads(data))
            except Exception as e:  # a progress display must never stop training
                log.warning("progress display failed: %s", e)


def _worker_env(schedule: Schedule) -> dict[str, str]:
    # Never credentials: a runtime_env is stored by the cluster and shown by its dashboard and job
    # API. Workers authenticate with their own environment or instance role.
    keep = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_MAX_ATTEMPTS",
            "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    # As many intra-op threads as CPUs reserved per worker: more would fight the other workers.
    env["OMP_NUM_THREADS"] = str(max(1, int(schedule.cpus_per_worker)))
    return env


def _ray_storage(output: str, storage: Storage):
    """Ray Train's storage path (and a pyarrow filesystem for an S3 endpoint of our own)."""
    if not is_s3(output):
        path = Path(output, "_ray").resolve()
        path.mkdir(parents=True, exist_ok=True)
        return str(path), None
    import pyarrow.fs as pafs

    cfg: S3Config = storage.s3
    bucket, key = split_s3(join(output, "_ray"))
    kwargs = {"region": cfg.region} if getattr(cfg, "region", None) else {}
    if cfg.endpoint_url:
        kwargs["endpoint_override"] = cfg.endpoint_url
        kwargs["scheme"] = "https" if cfg.endpoint_url.startswith("https") else "http"
    return f"{bucket}/{key}", pafs.S3FileSystem(**kwargs)


def _has_ray_state(storage_path: str, name: str, fs) -> bool:
    if fs is None:
        return Path(storage_path, name).exists() and any(Path(storage_path, name).iterdir())
    import pyarrow.fs as pafs

    info = fs.get_file_info(pafs.FileSelector(f"{storage_path}/{name}", allow_not_found=True))
    return bool(info)


def copy_final(storage: Storage, output: str, schedule: Schedule) -> str:
    """OUTPUT/model.pt: the last stage's checkpoint, the one `reelflow generate` takes."""
    last = join(stage_dir(output, schedule, len(schedule.stages) - 1), MODEL_FILE)
    target = join(output, MODEL_FILE)
    with tempfile.TemporaryDirectory() as d:
        local = storage.localize(last, d) if is_s3(last) else Path(last)
        storage.upload_file(local, target)
    return target

