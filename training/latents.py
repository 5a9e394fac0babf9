"""Precomputed latents: every clip of a curated dataset encoded once by the frozen TAE, for the
video stages that declare ``latents: true`` (Movie Gen's 768 px stage: the TAE is frozen after its
stage, and a ``window: start`` sample is the same pixels every epoch, so encoding it on every step
is wasted work; at 768 px it is most of a step).

A latent OUTPUT (a local directory or an ``s3://`` prefix):

    OUTPUT/plan.json                          what is encoded: dataset, TAE identity, spec, parts (a resume must match)
    OUTPUT/shards/<bucket>/part-NNNNNN.tar    WebDataset: ``<key>.npy`` = fp32 TAE posterior mean x latent_scale, (C, T, h, w)
    OUTPUT/parts/<bucket>/part-NNNNNN.json    the part's ledger (key, status, reason, shape), written after its tar
    OUTPUT/index.parquet                      one row per encoded clip (key, bucket, shard, shape, pixel size)
    OUTPUT/ledger.parquet                     every eligible clip once: status ok | failed, and why
    OUTPUT/latents.json                       the manifest, written last, after the gate: the latents are complete

The work unit is a *part*: a fixed run of clips of one aspect bucket, in key order (``plan_parts``:
a pure function of the index and the spec). A Ray Data actor pool (one TAE per actor, on a GPU when
the cluster has them) encodes parts; each part writes its tar, then its ledger, each atomically
(temp file + rename, or one S3 PUT). A run killed at any moment resumes by skipping the parts
whose ledger exists: nothing is encoded twice into the output or lost, and the files are
byte-identical to an uninterrupted run (fixed part plan, fixed tar headers, no timestamps). A clip
that fails to decode or encode is a ``failed`` ledger row with its reason, never a crash; a part
whose worker died on every retry is written as failed rows marked ``retryable`` and redone on the
next run. The gate (``check_latents``, Great Expectations as curation's) checks conservation
(every eligible clip once: ok + failed), unique keys, a reason on every failure and each ok clip's
shape against its bucket's, and names the failing ids.

The trainer reads them through ``PrecomputedLatents`` (training/loop.py): a video batch whose
latents are all there is never decoded, and its loss is the one encoding on the fly gives
(tests/training/test_latents.py). Image batches of a joint stage still encode on the fly (one
frame at a random time: cheap, and not fixed).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import signal
import tarfile
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from reelflow.curation.gates import FailedExpectation, GateFailed
from reelflow.curation.shard import write_tar
from reelflow.curation.storage import Storage, is_s3, join
from reelflow.training.checkpoint import CheckpointError, read_payload
from reelflow.training.data import (
    WHOLE_CLIP_MAX_BYTES,
    BatchSpec,
    ClipInfo,
    PlannedBatch,
    PlannedSample,
    ShardDataset,
    bucket_size,
    eligible_clips,
)
from reelflow.training.schedule import Schedule, StageSpec

log = logging.getLogger(__name__)

FORMAT = "reelflow-latents/1"
MANIFEST_FILE = "latents.json"
PLAN_FILE = "plan.json"
INDEX_FILE = "index.parquet"
LEDGER_FILE = "ledger.parquet"
DEFAULT_PART_SIZE = 64  # clips per part: the unit of work and of resume (768 px x 256 frames: ~19 MB a clip)
DEFAULT_ENCODE_BATCH = 4  # clips per TAE forward inside a part
# Tries of a part whose worker process died (a decoder crash) before its part is written as failed
# (retryable). Actors restart without bound: a pool whose last actor died for good would hang.
TASK_RETRIES = 2
OK, FAILED = "ok", "failed"
MANIFEST_FAILURES = 100  # failed clips named in latents.json (ledger.parquet names every one)


class LatentsError(ValueError):
    """Bad input for the latent stage (a stage that cannot use fixed latents, an OUTPUT holding
    other latents), or latents that do not fit the stage reading them."""


# -- what is encoded -----------------------------------------------------------------------------
@dataclass(frozen=True)
class LatentSpec:
    """The video samples a stage trains on: ``frames`` frames at ``fps`` from each clip's first
    frame, at ``resolution`` (sizes rounded to ``multiple``) in each aspect bucket."""

    resolution: int
    multiple: int
    frames: int
    fps: float
    buckets: tuple[str, ...] | None = None

    def batch_spec(self, batch_size: int = 1) -> BatchSpec:
        """The data reader's spec for these samples: every clip long enough (no split: the train
        and validation clips of any seed are all encoded), starting at its first frame."""
        return BatchSpec(kind="video", resolution=self.resolution, multiple=self.multiple, frames=self.frames,
                         fps=self.fps, batch_size=batch_size, split="train", val_fraction=0.0, weighted=False,
                         window="start", buckets=self.buckets)

    def pixel_shape(self, bucket: str) -> tuple[int, int, int]:
        """(T, H, W) of a sample of ``bucket``: what training/loop.py keys latents by."""
        return (self.frames, *bucket_size(bucket, self.resolution, self.multiple))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["buckets"] = list(self.buckets) if self.buckets else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LatentSpec:
        return cls(resolution=int(d["resolution"]), multiple=int(d["multiple"]), frames=int(d["frames"]),
                   fps=float(d["fps"]), buckets=tuple(d["buckets"]) if d.get("buckets") else None)

    @classmethod
    def of(cls, spec: BatchSpec) -> LatentSpec:
        return cls(spec.resolution, spec.multiple, spec.frames, spec.fps, spec.buckets)

    def same_samples(self, other: LatentSpec) -> bool:
        """The same pixels per clip (the buckets may differ: a clip is looked up by key)."""
        return (self.resolution, self.multiple, self.frames, self.fps) == (
            other.resolution, other.multiple, other.frames, other.fps)


def check_stage_can_use_latents(stage: StageSpec) -> None:
    """A stage's video samples must be fixed to precompute them (``StageSpec.latents_problem``)."""
    if problem := stage.latents_problem():
        raise LatentsError(f"stage {stage.name}: {problem}")


def stage_spec(schedule: Schedule, stage: StageSpec, multiple: int) -> LatentSpec:
    """The latent spec of ``stage`` (``multiple``: training/handoff.py:spatial_multiple of its models)."""
    check_stage_can_use_latents(stage)
    return LatentSpec(resolution=stage.resolution, multiple=multiple, frames=stage.frames, fps=stage.fps,
                      buckets=tuple(schedule.buckets) if schedule.buckets else None)


@dataclass(frozen=True)
class Part:
    """A fixed run of clips of one bucket, in key order: the unit of work and of resume."""

    name: str  # "<bucket>/part-NNNNNN"
    bucket: str
    keys: tuple[str, ...]

    @property
    def shard(self) -> str:
        return f"shards/{self.name}.tar"

    @property
    def ledger(self) -> str:
        return f"parts/{self.name}.json"


def plan_parts(clips: Iterable[ClipInfo], spec: LatentSpec, part_size: int = DEFAULT_PART_SIZE) -> list[Part]:
    """The parts of a dataset for ``spec``: its eligible clips (long enough, in ``spec.buckets``)
    by bucket, in key order, ``part_size`` a part. A pure function of the index and the spec."""
    if part_size < 1:
        raise ValueError(f"part_size must be positive, not {part_size}")
    by_bucket: dict[str, list[str]] = {}
    for c in eligible_clips(clips, spec.batch_spec()):
        by_bucket.setdefault(c.bucket, []).append(c.key)
    parts = []
    for bucket in sorted(by_bucket):
        keys = sorted(by_bucket[bucket])
        for i in range(0, len(keys), part_size):
            parts.append(Part(f"{bucket}/part-{i // part_size:06d}", bucket, tuple(keys[i:i + part_size])))
    return parts


# -- the frozen TAE ------------------------------------------------------------------------------
def load_tae(checkpoint: str, storage: Storage | None = None):
    """(ModelConfig, TemporalAutoencoder in eval mode, frozen) from a generation checkpoint,
    without building the other models (the 30B video transformer of a moviegen checkpoint is
    memory-mapped, never loaded)."""
    from reelflow.models.configs import ModelConfig
    from reelflow.models.tae import TemporalAutoencoder

    path = str((storage or Storage()).localize(checkpoint)) if is_s3(checkpoint) else checkpoint
    payload = read_payload(path, mmap=True, name=checkpoint)
    try:
        config = ModelConfig.from_dict(payload["config"])
        tae = TemporalAutoencoder(config.tae)
        tae.load_state_dict(payload["tae"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"invalid checkpoint {checkpoint}: {e}") from e
    return config, tae.eval().requires_grad_(False)


def tae_identity(tae: torch.nn.Module, latent_scale: float) -> str:
    """sha256 of the TAE's weights (names, dtypes, shapes, bytes) and its latent scale: what the
    latents depend on. Not the checkpoint file's hash: later stages' checkpoints carry the same
    frozen TAE (and other video weights), and their latents are the same."""
    h = hashlib.sha256()
    for name, t in sorted(tae.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(f"latent_scale={float(latent_scale)!r}".encode())
    return h.hexdigest()


# -- one part (on a Ray Data actor) --------------------------------------------------------------
def _npy(z: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(z, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


class PartEncoder:
    """Encodes parts: loads the TAE once (the Ray Data actor's constructor) and writes each part's
    tar and ledger. Also usable in-process (tests)."""

    def __init__(self, dataset: str, checkpoint: str, spec: dict, output: str,
                 encode_batch: int = DEFAULT_ENCODE_BATCH, faults: dict | None = None):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda":  # the same bytes on a rerun
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        self.storage = Storage()
        self.config, self.tae = load_tae(checkpoint, self.storage)
        self.tae.to(self.device)
        self.scale = self.config.tae.latent_scale
        self.spec = LatentSpec.from_dict(spec)
        self.batch_spec = self.spec.batch_spec()
        self.output, self.encode_batch = output, max(1, encode_batch)
        # A decode cache of one whole clip: each clip is read once, and decoded exactly as the
        # trainer's reader decodes it (whole when small, window by window when not).
        self.data = ShardDataset(dataset, self.storage, decode_cache_bytes=WHOLE_CLIP_MAX_BYTES)
        self.faults = faults or {}
        self.parts_done = 0

    def __call__(self, batch: dict) -> dict:
        out: dict[str, list] = {"part": [], "ok": [], "failed": []}
        for name, bucket, keys in zip(batch["part"], batch["bucket"], batch["keys"]):
            part = Part(str(name), str(bucket), tuple(str(keys).split("\n")))
            rows = self.write_part(part)
            out["part"].append(part.name)
            out["ok"].append(sum(r["status"] == OK for r in rows))
            out["failed"].append(sum(r["status"] == FAILED for r in rows))
        return out

    def write_part(self, part: Part) -> list[dict]:
        """Encode ``part`` and publish it: its tar, then its ledger (the ledger marks it done)."""
        if self.faults.get("crash_on") == part.name:  # testing: a part that kills its worker every time
            os.kill(os.getpid(), signal.SIGKILL)
        rows, members = self.encode_part(part)
        with tempfile.TemporaryDirectory(prefix="reelflow-latents-") as tmp:
            local = Path(tmp) / "part.tar"
            with open(local, "wb") as f:
                write_tar(f, ({"__key__": k, "npy": data} for k, data in members))
            self.storage.upload_file(local, join(self.output, part.shard))
        self._fault()
        self.storage.write_bytes(join(self.output, part.ledger), _ledger_bytes(rows))
        self.parts_done += 1
        return rows

    def _fault(self) -> None:
        """Testing faults: {"kill_at_part": n, "driver_pid": pid}: at this actor's n-th part, after
        its tar and before its ledger, kill the driver and this worker (SIGKILL), as a lost node
        would; {"crash_on": part name}: that part kills its worker at its start, on every try."""
        n = self.faults.get("kill_at_part")
        if n is None or self.parts_done + 1 != n:
            return
        pid = self.faults.get("driver_pid")
        if pid:
            os.kill(int(pid), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    def encode_part(self, part: Part) -> tuple[list[dict], list[tuple[str, bytes]]]:
        rows: list[dict] = []
        members: list[tuple[str, bytes]] = []
        for i in range(0, len(part.keys), self.encode_batch):
            chunk = part.keys[i:i + self.encode_batch]
            for key, z, reason in self._encode_chunk(part.bucket, chunk):
                row = {"key": key, "bucket": part.bucket, "part": part.name, "shard": part.shard,
                       "status": OK if z is not None else FAILED, "reason": reason,
                       "shape": list(z.shape) if z is not None else None, "retryable": False}
                rows.append(row)
                if z is not None:
                    members.append((key, _npy(z)))
        return rows, members

    def _encode_chunk(self, bucket: str, keys: tuple[str, ...]):
        """(key, latents or None, reason) for each key, in order. A clip that fails to decode
        or to encode (or encodes to non-finite values) fails alone."""
        pb = PlannedBatch(bucket, tuple(PlannedSample(k, 0.0) for k in keys), 0)
        batch = next(iter(self.data.decode_plan([(0, pb)], self.batch_spec)), None)
        got: dict[str, np.ndarray | str] = {}
        if batch is not None:
            try:
                z = self._encode(batch.pixels)
                got.update(zip(batch.keys, z))
            except Exception as e:  # a whole chunk failed: try its clips one at a time
                if len(batch.keys) == 1:
                    got[batch.keys[0]] = f"encode: {type(e).__name__}: {e}"
                else:
                    for j, key in enumerate(batch.keys):
                        try:
                            got[key] = self._encode(batch.pixels[j:j + 1])[0]
                        except Exception as e1:
                            got[key] = f"encode: {type(e1).__name__}: {e1}"
        for key in keys:
            value = got.get(key)
            if value is None:
                reason = self.data.stats.failures.get(key, "could not be decoded (see the worker log)")
                yield key, None, f"decode: {reason}"
            elif isinstance(value, str):
                yield key, None, value
            elif not np.isfinite(value).all():
                yield key, None, "encode: non-finite latents"
            else:
                yield key, value, None

    @torch.no_grad()
    def _encode(self, pixels: torch.Tensor) -> np.ndarray:
        # exactly training/steps.py:encode_latents: the frozen posterior mean x latent_scale
        z = self.tae.encode(pixels.to(self.device)) * self.scale
        return z.float().cpu().numpy()


def _ledger_bytes(rows: list[dict]) -> bytes:
    return json.dumps(rows, sort_keys=True, indent=0).encode()


# -- the run -------------------------------------------------------------------------------------
@dataclass
class LatentSummary:
    output: str
    eligible: int  # clips the spec covers
    ok: int
    failed: int
    parts: int
    parts_resumed: int  # parts finished by an earlier run and skipped by this one
    seconds: float
    skipped: bool = False  # the whole output was complete already
    buckets: dict[str, dict] = field(default_factory=dict)  # bucket -> {"clips", "shape", "pixels"}
    failures: dict[str, str] = field(default_factory=dict)  # key -> reason


def run_latents(dataset: str, output: str, checkpoint: str, spec: LatentSpec, *,
                stage: StageSpec | None = None, part_size: int = DEFAULT_PART_SIZE,
                encode_batch: int = DEFAULT_ENCODE_BATCH, workers: int | None = None,
                storage: Storage | None = None, progress: Callable[[int, int], None] | None = None,
                faults: dict | None = None) -> LatentSummary:
    """Encode every clip of ``dataset`` that ``spec`` covers into ``output`` with the TAE of
    ``checkpoint`` (resuming a run that stopped; a no-op on a complete output of the same inputs).

    Raises LatentsError when ``output`` holds latents of other inputs or the spec does not fit the
    TAE, CheckpointError / DataError on a bad checkpoint / dataset, GateFailed when the gate fails.
    ``progress(clips done, clips)`` follows the parts as they finish. Uses the connected Ray (a
    local one is started if none is)."""
    t0 = time.perf_counter()
    storage = storage or Storage()
    data = ShardDataset(dataset, storage)  # DataError when it is not a curated dataset
    config, tae = load_tae(checkpoint, storage)
    try:
        latent_frames = config.tae.latent_frames(spec.frames)
    except ValueError as e:
        raise LatentsError(f"{spec.frames} frames do not fit this TAE: {e}") from None
    s = config.tae.spatial_compression
    if spec.multiple % s:
        raise LatentsError(f"sizes rounded to multiples of {spec.multiple} px do not divide by the TAE's "
                           f"{s}x spatial compression")
    identity = tae_identity(tae, config.tae.latent_scale)
    del tae
    parts = plan_parts(data.clips.values(), spec, part_size)
    if not parts:
        raise LatentsError(f"no clip of {dataset} fits: {spec.batch_spec().describe()}")
    keys = [k for p in parts for k in p.keys]
    plan = {"format": FORMAT, "dataset": dataset, "tae_sha256": identity, "latent_scale": config.tae.latent_scale,
            "spec": spec.to_dict(), "part_size": part_size, "clips": len(keys),
            "keys_sha256": hashlib.sha256("\n".join(keys).encode()).hexdigest()}
    done = _complete(storage, output, plan)
    if done is not None:
        return _summary(output, done, len(parts), len(parts), time.perf_counter() - t0, skipped=True)
    _claim(storage, output, plan)

    finished = {p.name for p in parts if _part_done(storage, output, p, redo_lost=True)}
    todo = [p for p in parts if p.name not in finished]
    total, count = len(keys), sum(len(p.keys) for p in parts if p.name in finished)
    if progress:
        progress(count, total)

    def on_done(clips: int) -> None:
        nonlocal count
        count += clips
        if progress:
            progress(count, total)

    if todo:
        _clean_temp(output)
        _encode_parts(todo, dataset, checkpoint, spec, output, encode_batch, workers, faults, on_done)
        lost = [p for p in todo if not _part_done(storage, output, p)]
        for p in lost:  # its worker died on every try: failed rows, retried by the next run
            log.warning("latents: part %s lost its worker %d time(s); its clips are failed (rerun to retry)",
                        p.name, TASK_RETRIES + 1)
            rows = [{"key": k, "bucket": p.bucket, "part": p.name, "shard": p.shard, "status": FAILED,
                     "reason": f"the encoding worker died {TASK_RETRIES + 1} time(s) on this part", "shape": None,
                     "retryable": True} for k in p.keys]
            storage.write_bytes(join(output, p.ledger), _ledger_bytes(rows))
    ledger = _read_ledgers(storage, output, parts)
    expected = {}  # bucket -> the latents' (C, T, h, w)
    for b in sorted({p.bucket for p in parts}):
        _, h, w = spec.pixel_shape(b)
        expected[b] = [config.tae.latent_channels, latent_frames, h // s, w // s]
    check_latents(ledger, keys, expected)
    manifest = _finish(storage, output, plan, ledger, spec, expected, checkpoint, stage)
    return _summary(output, manifest, len(parts), len(finished), time.perf_counter() - t0)


def _encode_parts(todo: list[Part], dataset: str, checkpoint: str, spec: LatentSpec, output: str,
                  encode_batch: int, workers: int | None, faults: dict | None,
                  on_done: Callable[[int], None]) -> None:
    """The pending parts through a Ray Data actor pool (a GPU each when the cluster has GPUs)."""
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    _quiet_ray_data()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    n = workers or (gpus if gpus else max(1, cpus // 2))
    n = max(1, min(n, len(todo)))
    items = [{"part": p.name, "bucket": p.bucket, "keys": "\n".join(p.keys)} for p in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    resources = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
    # One part in flight per actor: a part that kills its worker takes no other part down with it.
    retries = {"max_restarts": -1, "max_task_retries": TASK_RETRIES}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args_fn.*deprecated")
        pool = ray.data.ActorPoolStrategy(size=n, max_tasks_in_flight_per_actor=1)
        ds = ds.map_batches(PartEncoder, batch_size=1, batch_format="default", compute=pool,
                            fn_constructor_kwargs={"dataset": dataset, "checkpoint": checkpoint, "spec": spec.to_dict(),
                                                   "output": output, "encode_batch": encode_batch, "faults": faults},
                            ray_remote_args_fn=lambda: retries, **resources)
    # A part whose worker died beyond its retries is a lost block (max_errored_blocks=-1): the
    # caller writes it as failed rows. Anything raised here (an actor that cannot even load the
    # TAE) stops the run: nothing is published for the parts it did not do.
    for row in ds.iter_rows():
        on_done(int(row["ok"]) + int(row["failed"]))


def _quiet_ray_data() -> None:
    """As curation's runs set it (curation/pipeline.py): no Ray progress bars, and a block whose
    worker died beyond its retries does not abort the others."""
    import ray

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    ctx.max_errored_blocks = -1


def _complete(storage: Storage, output: str, plan: dict) -> dict | None:
    """The manifest of a complete output of the same inputs; None when there is none yet.
    Raises LatentsError when ``output`` holds latents of other inputs."""
    uri = join(output, MANIFEST_FILE)
    if not storage.exists(uri):
        return None
    manifest = json.loads(storage.read_bytes(uri))
    if manifest.get("plan") != plan:
        raise LatentsError(f"{output} holds latents of another dataset, TAE or spec ({_diff(manifest.get('plan'), plan)});"
                           " use a new OUTPUT")
    if manifest["clips"].get("retryable"):  # parts whose worker was lost: redo them, then publish anew
        storage.delete(uri)
        return None
    return manifest


def _claim(storage: Storage, output: str, plan: dict) -> None:
    uri = join(output, PLAN_FILE)
    if storage.exists(uri):
        held = json.loads(storage.read_bytes(uri))
        if held != plan:
            raise LatentsError(f"{output} holds a latent run of another dataset, TAE or spec ({_diff(held, plan)}); "
                               "use a new OUTPUT")
        return
    storage.write_bytes(uri, json.dumps(plan, indent=1, sort_keys=True).encode())


def _diff(held: dict | None, wanted: dict) -> str:
    held = held or {}
    keys = [k for k in wanted if held.get(k) != wanted[k]]
    return "differs in " + ", ".join(keys) if keys else "unreadable plan"


def _part_done(storage: Storage, output: str, part: Part, redo_lost: bool = False) -> bool:
    """A part is done when its ledger exists (written after its tar). With ``redo_lost``, a ledger
    that records a lost worker (retryable rows) is removed, and the part is to be done again."""
    uri = join(output, part.ledger)
    if not storage.exists(uri):
        return False
    if redo_lost and any(r.get("retryable") for r in json.loads(storage.read_bytes(uri))):
        storage.delete(uri)
        return False
    return True


def _clean_temp(output: str) -> None:
    """Temporary files of a killed run's writers (``.<name>.*`` beside the file they were for)."""
    if is_s3(output):
        return  # S3 PUTs are whole or absent
    for sub in ("shards", "parts"):
        root = Path(output, sub)
        if root.is_dir():
            for p in root.rglob(".*"):
                if p.is_file():
                    p.unlink(missing_ok=True)


LEDGER_SCHEMA = pa.schema([("key", pa.string()), ("bucket", pa.string()), ("part", pa.string()),
                           ("shard", pa.string()), ("status", pa.string()), ("reason", pa.string()),
                           ("shape", pa.list_(pa.int64())), ("retryable", pa.bool_())])


def _read_ledgers(storage: Storage, output: str, parts: list[Part]) -> list[dict]:
    rows: list[dict] = []
    for p in parts:  # in plan order: the same table whatever order the parts finished in
        rows.extend(json.loads(storage.read_bytes(join(output, p.ledger))))
    return rows


def check_latents(ledger: list[dict], eligible: list[str], shapes: dict[str, list[int]]) -> None:
    """The gate: every eligible clip exactly once (ok + failed == eligible, nothing else), statuses
    known, a reason on every failure, and every ok clip's latents of its bucket's shape. Raises
    GateFailed (exit 3) naming the failing clip ids."""
    import great_expectations.expectations as gxe
    import pandas as pd

    from reelflow.curation.gates import run_suite

    df = pd.DataFrame(ledger, columns=[f.name for f in LEDGER_SCHEMA])
    df["shape_text"] = [json.dumps(s) if s is not None else None for s in df["shape"]]
    df["expected_shape"] = [json.dumps(shapes.get(b)) for b in df["bucket"]]
    df["eligible"] = df["key"].isin(set(eligible))
    exps = [
        gxe.ExpectColumnValuesToNotBeNull(column="key"),
        gxe.ExpectColumnValuesToBeUnique(column="key"),
        gxe.ExpectColumnValuesToBeInSet(column="eligible", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=[OK, FAILED]),
        gxe.ExpectColumnValuesToNotBeNull(column="reason", row_condition=f'status=="{FAILED}"',
                                          condition_parser="pandas"),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="shape_text", column_B="expected_shape",
                                            row_condition=f'status=="{OK}"', condition_parser="pandas"),
    ]
    failures = run_suite("latents", df, exps, "key")
    missing = sorted(set(eligible) - set(df["key"]))
    if missing:  # conservation: every eligible clip has a row
        failures.append(FailedExpectation("expect_every_eligible_clip_in_the_ledger", {}, missing,
                                          f"{len(missing)} of {len(eligible)} eligible clip(s) have no ledger row"))
    if failures:
        raise GateFailed("latents", failures, len(df))


def _write_parquet(storage: Storage, uri: str, rows: list[dict], schema: pa.Schema) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    storage.write_bytes(uri, buf.getvalue())


INDEX_SCHEMA = pa.schema([("key", pa.string()), ("bucket", pa.string()), ("shard", pa.string()),
                          ("shape", pa.list_(pa.int64())), ("frames", pa.int64()), ("height", pa.int64()),
                          ("width", pa.int64())])


def _finish(storage: Storage, output: str, plan: dict, ledger: list[dict], spec: LatentSpec,
            shapes: dict[str, list[int]], checkpoint: str, stage: StageSpec | None) -> dict:
    """index.parquet, ledger.parquet, then the manifest (last: its presence says complete)."""
    index = []
    for r in ledger:
        if r["status"] == OK:
            t, h, w = spec.pixel_shape(r["bucket"])
            index.append({"key": r["key"], "bucket": r["bucket"], "shard": r["shard"], "shape": r["shape"],
                          "frames": t, "height": h, "width": w})
    _write_parquet(storage, join(output, INDEX_FILE), index, INDEX_SCHEMA)
    _write_parquet(storage, join(output, LEDGER_FILE), ledger, LEDGER_SCHEMA)
    buckets = {}
    for b in sorted(shapes):
        t, h, w = spec.pixel_shape(b)
        buckets[b] = {"clips": sum(1 for r in index if r["bucket"] == b), "shape": shapes[b], "pixels": [t, h, w]}
    manifest = {
        "format": FORMAT, "plan": plan, "checkpoint": checkpoint, "tae_sha256": plan["tae_sha256"],
        "latent_scale": plan["latent_scale"], "spec": spec.to_dict(),
        "stage": stage.model_dump(mode="json") if stage is not None else None,
        "clips": {"eligible": len(ledger), "ok": len(index), "failed": len(ledger) - len(index),
                  "retryable": sum(1 for r in ledger if r.get("retryable"))},
        "buckets": buckets, "index": INDEX_FILE, "ledger": LEDGER_FILE,
        # the first MANIFEST_FAILURES, for a quick look; ledger.parquet has them all
        "failures": dict(list({r["key"]: r["reason"] for r in ledger if r["status"] != OK}.items())[:MANIFEST_FAILURES]),
    }
    storage.write_bytes(join(output, MANIFEST_FILE), json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def _summary(output: str, manifest: dict, parts: int, resumed: int, seconds: float,
             skipped: bool = False) -> LatentSummary:
    c = manifest["clips"]
    return LatentSummary(output=output, eligible=c["eligible"], ok=c["ok"], failed=c["failed"], parts=parts,
                         parts_resumed=resumed, seconds=seconds, skipped=skipped, buckets=manifest["buckets"],
                         failures=manifest.get("failures", {}))


def read_manifest(latents: str, storage: Storage | None = None) -> dict:
    """The manifest of a complete latent output; LatentsError when there is none."""
    storage = storage or Storage()
    uri = join(latents, MANIFEST_FILE)
    if not storage.exists(uri):
        raise LatentsError(f"{latents} holds no complete latents (no {MANIFEST_FILE}): run `reelflow latents` "
                           "or the train flow, which encodes them before the stage")
    manifest = json.loads(storage.read_bytes(uri))
    if manifest.get("format") != FORMAT:
        raise LatentsError(f"{uri} is not a {FORMAT} manifest")
    return manifest


# -- the trainer's side --------------------------------------------------------------------------
class PrecomputedLatents:
    """Latents of a stage's video samples read from a latent output, with the interface of
    training/loop.py's LatentCache (``covers``, ``lookup``, ``encode``): a clip not in the output
    (its encoding failed) falls back to ``fallback``, which encodes it on the fly.

    ``covers`` runs in the data reader's thread (index only); reads open the shard per call."""

    def __init__(self, latents: str, fallback, storage: Storage | None = None, cache_dir: str | None = None):
        self.latents = latents if is_s3(latents) else str(Path(latents).resolve())
        self.storage = storage or Storage()
        self.cache_dir = cache_dir
        self.manifest = read_manifest(self.latents, self.storage)
        self.spec = LatentSpec.from_dict(self.manifest["spec"])
        table = pq.read_table(io.BytesIO(self.storage.read_bytes(join(self.latents, INDEX_FILE))))
        self.entries: dict[str, tuple[str, tuple[int, int, int]]] = {
            r["key"]: (r["shard"], (r["frames"], r["height"], r["width"])) for r in table.to_pylist()}
        self.fallback = fallback
        self.reads = 0  # samples read from the output
        self.misses = 0  # samples encoded on the fly (not in the output)
        self._lock = threading.Lock()
        self._shards: dict[str, tuple[str, dict[str, tuple[int, int]]]] = {}

    def check(self, tae: torch.nn.Module, latent_scale: float, spec: LatentSpec, stage: str = "") -> None:
        """Raise LatentsError unless these latents are of this TAE (weights and scale) and spec."""
        where = f"stage {stage}: " if stage else ""
        if not spec.same_samples(self.spec):
            raise LatentsError(f"{where}the latents in {self.latents} are of {self.spec.to_dict()}, the stage reads "
                               f"{spec.to_dict()}: encode them again for this stage")
        if tae_identity(tae, latent_scale) != self.manifest["tae_sha256"]:
            raise LatentsError(f"{where}the latents in {self.latents} were encoded by another TAE (or latent scale) "
                               "than the one this stage starts from: encode them again with its checkpoint")

    def _has(self, key: str, shape: tuple) -> bool:
        entry = self.entries.get(key)
        return entry is not None and entry[1] == tuple(shape)

    def covers(self, keys: list[str], shape: tuple[int, int, int]) -> bool:
        return all(self._has(k, shape) or self.fallback.covers([k], shape) for k in keys)

    def lookup(self, keys: list[str], shape: tuple[int, int, int]) -> torch.Tensor:
        out = []
        for k in keys:
            if self._has(k, shape):
                out.append(self.read(k))
            else:
                out.append(self.fallback.lookup([k], shape)[0])
        return torch.stack(out)

    def encode(self, keys: list[str], pixels: torch.Tensor, encode) -> torch.Tensor:
        """A decoded batch (some clip was not in the output): read what is there, encode the rest."""
        shape = tuple(pixels.shape[2:])
        found: list[torch.Tensor | None] = [None] * len(keys)
        todo = []
        for i, k in enumerate(keys):
            if self._has(k, shape):
                found[i] = self.read(k).to(pixels.device)
            else:
                todo.append(i)
        if todo:
            self.misses += len(todo)
            fresh = self.fallback.encode([keys[i] for i in todo], pixels[todo], encode)
            for j, i in enumerate(todo):
                found[i] = fresh[j]
        return torch.stack(found)

    def read(self, key: str) -> torch.Tensor:
        shard, _ = self.entries[key]
        path, members = self._members(shard)
        offset, size = members[f"{key}.npy"]
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise OSError(f"{join(self.latents, shard)} is truncated at {key}.npy")
        self.reads += 1
        return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False))

    def _members(self, shard: str) -> tuple[str, dict[str, tuple[int, int]]]:
        with self._lock:
            hit = self._shards.get(shard)
            if hit is None:
                path = str(self.storage.localize(join(self.latents, shard), self.cache_dir))
                with tarfile.open(path) as tf:
                    hit = (path, {m.name: (m.offset_data, m.size) for m in tf.getmembers() if m.isfile()})
                self._shards[shard] = hit
            return hit


def describe(summary: LatentSummary) -> str:
    done = "already complete" if summary.skipped else f"{summary.seconds:.1f} s"
    resumed = f", {summary.parts_resumed} resumed" if summary.parts_resumed and not summary.skipped else ""
    return (f"{summary.ok} of {summary.eligible} clip(s) encoded, {summary.failed} failed, in {summary.parts} "
            f"part(s){resumed} ({done})")

