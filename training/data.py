"""Curated shards -> bucketed training batches.

A curated reelflow dataset (``reelflow curate``) is ``index.parquet`` plus WebDataset tars under
``shards/``. Training reads it in two steps:

1. **Plan** (index only, no decoding): which samples go into which batch, in which order, for
   each rank. The plan is a pure function of (index, spec, seed, epoch, rank, world_size), so a
   resumed run skips the first ``start_batch`` batches without decoding them and continues
   exactly where it stopped, and DDP ranks always get the same number of batches.
2. **Decode**: read each planned sample's members straight from its tar by offset, decode the
   frames it needs with PyAV (nearest frame to each target time), scale-to-cover + center-crop
   to its aspect bucket's size, and the audio span when asked for.

Batches hold one aspect bucket each (Movie Gen trains on aspect-ratio buckets so every sample of a
batch has the same H x W). A sample that fails to decode is skipped and counted, never raised.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import math
import tarfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import av
import numpy as np
import pyarrow.parquet as pq
import torch

from reelflow.curation import output_tables
from reelflow.curation.storage import Storage, join
from reelflow.training.captions import FPS_TOKEN, at_rate

log = logging.getLogger(__name__)

INDEX_FILE = "index.parquet"
INDEX_COLUMNS = ("key", "shard", "duration_s", "fps", "aspect_bucket", "has_audio")
OPTIONAL_COLUMNS = ("caption", "sampling_weight", "title", "description")
DEFAULT_DECODE_CACHE_BYTES = 512 << 20
# A clip whose every frame at the sample size (plus its audio) fits in this is decoded whole, once
# per size, and each training window is cut from it: random windows of one clip (the TAE and audio
# stages) then decode it once instead of once a window. Larger clips decode window by window.
WHOLE_CLIP_MAX_BYTES = 16 << 20
MAX_RECORDED_FAILURES = 1000
# Split by shard only when the shards share out this evenly; otherwise padding the short ranks
# would repeat too much data, and splitting by sample is better.
SHARD_SPLIT_MIN_BALANCE = 0.9


class DataError(ValueError):
    """The dataset is not a curated reelflow dataset, or nothing in it fits the batch spec."""


@dataclass(frozen=True)
class BatchSpec:
    """What one stream of batches looks like: kind, size, frames and (optionally) audio."""

    kind: Literal["image", "video"]
    resolution: int  # nominal px: a bucket with aspect a:b gets (h, w) with w/h ~ a/b and w*h ~ resolution**2
    multiple: int  # h and w rounded to a multiple of this (>= multiple)
    frames: int = 1  # pixel frames per sample (1 for images)
    fps: float = 16.0  # Movie Gen trains at >= 16 fps; samples are resampled to this rate
    batch_size: int = 1  # per worker
    audio_sample_rate: int | None = None  # mono float32 audio over frames/fps, resampled to this rate
    split: Literal["train", "val"] = "train"
    val_fraction: float = 0.0
    seed: int = 0
    weighted: bool = True  # train: a sample appears floor(w) + Bernoulli(frac(w)) times per epoch
    window: Literal["random", "start"] = "random"  # video: where the frames start (val always at the start)
    buckets: tuple[str, ...] | None = None  # aspect buckets to use; None: all
    # train: the share of samples captioned with their source's own text instead of the assembled
    # caption (StageSpec.source_caption_ratio); val always uses the caption
    source_caption_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("image", "video"):
            raise ValueError(f"kind must be 'image' or 'video', not {self.kind!r}")
        if self.window not in ("random", "start"):
            raise ValueError(f"window must be 'random' or 'start', not {self.window!r}")
        if self.split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', not {self.split!r}")
        if self.kind == "image" and self.frames != 1:
            raise ValueError(f"an image spec has frames=1, not {self.frames}")
        if min(self.resolution, self.multiple, self.frames, self.batch_size) < 1 or self.fps <= 0:
            raise ValueError(f"resolution, multiple, frames, batch_size and fps must be positive: {self}")
        if not 0.0 <= self.val_fraction <= 1.0:
            raise ValueError(f"val_fraction must be in [0, 1], not {self.val_fraction}")
        if not 0.0 <= self.source_caption_ratio <= 1.0:
            raise ValueError(f"source_caption_ratio must be in [0, 1], not {self.source_caption_ratio}")
        if self.audio_sample_rate is not None and self.audio_sample_rate < 1:
            raise ValueError(f"audio_sample_rate must be positive, not {self.audio_sample_rate}")

    @property
    def span_s(self) -> float:
        """Seconds of clip one sample covers (frames at fps)."""
        return self.frames / self.fps

    @property
    def audio_samples(self) -> int:
        return round(self.frames / self.fps * self.audio_sample_rate) if self.audio_sample_rate else 0

    def describe(self) -> str:
        """Words for error messages: which clips this spec needs."""
        parts = [f"at least {self.span_s:.3g} s" if self.kind == "video" else "any length"]
        if self.audio_sample_rate:
            parts.append("with audio")
        if self.buckets:
            parts.append(f"in bucket(s) {', '.join(self.buckets)}")
        return f"clips of {' '.join(parts)} in the {self.split} split (val_fraction={self.val_fraction:g})"


def _unit_draw(text: str) -> float:
    """A uniform draw in [0, 1) fixed by ``text`` (blake2b: crc32's linearity correlates near keys)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2**64


def sample_caption(caption: str, spec: BatchSpec, source_text: str = "", position: int = 0, key: str = "") -> str:
    """The caption one training sample is trained with: its ``FPS-<n>`` token rewritten to the rate
    the sample is resampled to (an image's dropped), see training/captions.py.

    With ``spec.source_caption_ratio`` > 0, that share of training samples that have source text
    is captioned with it instead (behind the same token): a draw per (seed, batch position, key),
    so a resumed run trains on the same captions."""
    ratio = spec.source_caption_ratio if spec.split == "train" else 0.0
    if ratio > 0 and source_text and _unit_draw(f"{spec.seed}:{position}:{key}") < ratio:
        token = FPS_TOKEN.match(caption)
        caption = (token.group(0) if token else "") + source_text
    return at_rate(caption, spec.fps if spec.kind == "video" else None)


@dataclass
class Batch:
    # (B, 3, T, H, W) float32 in [-1, 1]; T == spec.frames (1 for images). None when the caller
    # said it holds what it needs of these samples already (``decode_plan``'s ``have``).
    pixels: torch.Tensor | None
    captions: list[str]
    keys: list[str]
    bucket: str  # the aspect bucket, e.g. "16x9"
    audio: torch.Tensor | None = None  # (B, N) float32 mono, N = round(frames / fps * audio_sample_rate)
    # This batch's index in the rank's plan. It runs ahead of a count of batches received when a
    # whole batch failed to decode: resume exactly with start_batch=position + 1.
    position: int | None = None


@dataclass
class DataStats:
    """Counters of one ShardDataset (in its own process: DataLoader workers keep their own)."""

    samples_decoded: int = 0  # samples delivered (decoded or from the decode cache)
    samples_failed: int = 0  # planned samples skipped because they could not be read or decoded
    cache_hits: int = 0
    batches: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # key -> reason, at most MAX_RECORDED_FAILURES

    def record_failure(self, key: str, reason: str) -> None:
        self.samples_failed += 1
        if key in self.failures or len(self.failures) < MAX_RECORDED_FAILURES:
            self.failures[key] = reason


@dataclass(frozen=True)
class ClipInfo:
    """The index fields planning and decoding need, one per clip."""

    key: str
    shard: str  # relative to the dataset root, e.g. shards/16x9_2p5-4s/shard-000000.tar
    bucket: str  # aspect bucket, e.g. 16x9
    duration_s: float
    fps: float
    has_audio: bool
    weight: float = 1.0
    caption: str = ""
    # the source's own words (manifest description, else title): the "original caption" that
    # source_caption_ratio blends with the assembled one
    source_text: str = ""

    @classmethod
    def from_row(cls, row: Mapping) -> ClipInfo:
        weight = row.get("sampling_weight")
        if weight is None or not math.isfinite(float(weight)):
            weight = 1.0
        return cls(key=str(row["key"]), shard=str(row["shard"]), bucket=str(row["aspect_bucket"]),
                   duration_s=float(row["duration_s"]), fps=float(row.get("fps") or 0.0),
                   has_audio=bool(row["has_audio"]), weight=max(0.0, float(weight)),
                   caption=str(row.get("caption") or ""),
                   source_text=str(row.get("description") or row.get("title") or "").strip())


@dataclass(frozen=True)
class PlannedSample:
    key: str
    start_s: float  # time of the first frame, in seconds from the clip start


@dataclass(frozen=True)
class PlannedBatch:
    bucket: str
    samples: tuple[PlannedSample, ...]
    epoch: int

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.samples]


# -- sizes and splits ----------------------------------------------------------------------------
def parse_aspect(aspect: str) -> tuple[int, int]:
    """"16x9" -> (16, 9)."""
    a, sep, b = str(aspect).partition("x")
    if not sep or not a.isdigit() or not b.isdigit() or int(a) == 0 or int(b) == 0:
        raise ValueError(f"aspect bucket must look like '16x9', not {aspect!r}")
    return int(a), int(b)


def bucket_size(aspect: str, resolution: int, multiple: int) -> tuple[int, int]:
    """(h, w) for an aspect bucket: w/h ~ a/b, w*h ~ resolution**2, both multiples of ``multiple``."""
    a, b = parse_aspect(aspect)
    h = resolution * math.sqrt(b / a)
    w = resolution * math.sqrt(a / b)
    return _round_to(h, multiple), _round_to(w, multiple)


def _round_to(x: float, multiple: int) -> int:
    return max(multiple, round(x / multiple) * multiple)


def _hash_u64(*parts: object) -> int:
    """A stable 64-bit hash (Python's hash() is salted per process)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _unit(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) from ``parts``."""
    return _hash_u64(*parts) / 2.0**64


def split_of(key: str, val_fraction: float, seed: int) -> str:
    """"val" for about ``val_fraction`` of keys, stably across processes and runs; else "train"."""
    return "val" if _unit("split", seed, key) < val_fraction else "train"


def repeats_in_epoch(weight: float, seed: int, epoch: int, key: str) -> int:
    """floor(w) + Bernoulli(frac(w)): a clip of weight w appears w times per epoch on average."""
    whole = math.floor(weight)
    return whole + int(_unit("repeat", seed, epoch, key) < weight - whole)


def eligible_clips(clips: Iterable[ClipInfo], spec: BatchSpec) -> list[ClipInfo]:
    """Clips usable for ``spec``, sorted by key: in its split, long enough, with audio if asked,
    in one of ``spec.buckets`` when set.

    With ``val_fraction`` > 0 and at least two usable clips, the held-out split is never empty:
    when the hash holds out none of them (likely for a handful of clips: 0.8^11 = 9% at 20%),
    the usable clip with the smallest split hash is held out, so every stage has a validation
    loss. Deterministic: the same clips give the same split."""
    usable = [c for c in clips
              if not (spec.kind == "video" and c.duration_s + 1e-6 < spec.span_s)
              and not (spec.audio_sample_rate and not c.has_audio)
              and not (spec.buckets and c.bucket not in spec.buckets)]
    val = {c.key for c in usable if split_of(c.key, spec.val_fraction, spec.seed) == "val"}
    if not val and spec.val_fraction > 0 and len(usable) >= 2:
        val = {min(usable, key=lambda c: _unit("split", spec.seed, c.key)).key}
    out = [c for c in usable if (c.key in val) == (spec.split == "val")]
    return sorted(out, key=lambda c: c.key)


# -- planning (index only) -----------------------------------------------------------------------
def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(_hash_u64(*parts))


def _snap(t: float, fps: float) -> float:
    """Snap a time down to the source frame grid, so repeated picks hit the decode cache."""
    return math.floor(t * fps + 1e-6) / fps if fps > 0 else t


def start_time(clip: ClipInfo, spec: BatchSpec, epoch: int, copy: int) -> float:
    """The first frame's time: random per (seed, epoch, key, copy) for train, fixed for val
    (the middle frame for images, the clip start for video); a video spec with window 'start'
    always starts at the clip start."""
    src_fps = clip.fps if clip.fps > 0 else spec.fps
    u = _unit("t", spec.seed, epoch, clip.key, copy)
    if spec.kind == "image":
        t = clip.duration_s / 2 if spec.split == "val" else u * clip.duration_s
        return min(_snap(t, src_fps), _snap(max(0.0, clip.duration_s - 1e-6), src_fps))
    if spec.split == "val" or spec.window == "start":
        return 0.0
    slack = max(0.0, clip.duration_s - spec.span_s)
    steps = math.floor(slack * src_fps + 1e-6)  # start frames whose span still fits
    return math.floor(u * (steps + 1)) / src_fps


def assign_ranks(clips: Sequence[ClipInfo], world_size: int, seed: int, weighted: bool = True) -> dict[str, int]:
    """key -> rank, fixed for the run: whole shards per rank when there are enough shards to share
    out evenly (each rank then reads only its own shards), else clip by clip."""
    if world_size == 1:
        return {c.key: 0 for c in clips}
    by_shard = _assign_by_shard(clips, world_size, weighted)
    if by_shard is not None:
        return by_shard
    keys = sorted(c.key for c in clips)
    perm = _rng("ranks", seed).permutation(len(keys))
    return {keys[i]: pos % world_size for pos, i in enumerate(perm)}


def _assign_by_shard(clips: Sequence[ClipInfo], world_size: int, weighted: bool) -> dict[str, int] | None:
    load: dict[str, float] = {}
    for c in clips:
        load[c.shard] = load.get(c.shard, 0.0) + (c.weight if weighted else 1.0)
    if len(load) < world_size:
        return None
    totals = [0.0] * world_size
    owner: dict[str, int] = {}
    for shard in sorted(load, key=lambda s: (-load[s], s)):  # largest first onto the least loaded rank
        r = min(range(world_size), key=lambda i: (totals[i], i))
        owner[shard] = r
        totals[r] += load[shard]
    if min(totals) < SHARD_SPLIT_MIN_BALANCE * max(totals):
        return None
    return {c.key: owner[c.shard] for c in clips}


def _epoch_batches(clips: Sequence[ClipInfo], spec: BatchSpec, epoch: int, rank: int, world_size: int,
                   pending: dict[str, list[PlannedSample]]) -> list[PlannedBatch]:
    """One rank's full batches of one epoch; partial piles stay in ``pending`` for the next."""
    instances = [(c, copy) for c in clips
                 for copy in range(repeats_in_epoch(c.weight, spec.seed, epoch, c.key) if spec.weighted else 1)]
    out = []
    for i in _rng("order", spec.seed + epoch, rank, world_size).permutation(len(instances)):
        c, copy = instances[i]
        pile = pending.setdefault(c.bucket, [])
        pile.append(PlannedSample(c.key, start_time(c, spec, epoch, copy)))
        if len(pile) == spec.batch_size:
            out.append(PlannedBatch(c.bucket, tuple(pile), epoch))
            pending[c.bucket] = []
    return out


def _pad(batches: list[PlannedBatch], target: int, clips: Sequence[ClipInfo], spec: BatchSpec, epoch: int,
         pending: Mapping[str, list[PlannedSample]]) -> list[PlannedBatch]:
    """Bring a rank up to ``target`` batches by repeating its own: DDP ranks must stay in step."""
    if len(batches) >= target:
        return batches
    pool = batches or [_filler_batch(clips, spec, epoch, pending)]
    return batches + [pool[i % len(pool)] for i in range(target - len(batches))]


def _filler_batch(clips: Sequence[ClipInfo], spec: BatchSpec, epoch: int,
                  pending: Mapping[str, list[PlannedSample]]) -> PlannedBatch:
    """A batch for a rank that completed none this epoch: its largest pending pile, else its own
    clips of its most common bucket, repeated up to batch_size."""
    bucket, pile = max(pending.items(), key=lambda kv: (len(kv[1]), kv[0]), default=("", []))
    if not pile:
        counts: dict[str, int] = {}
        for c in clips:
            counts[c.bucket] = counts.get(c.bucket, 0) + 1
        bucket = max(counts, key=lambda b: (counts[b], b))
        pile = [PlannedSample(c.key, start_time(c, spec, epoch, 0)) for c in clips if c.bucket == bucket]
    return PlannedBatch(bucket, tuple(pile[i % len(pile)] for i in range(spec.batch_size)), epoch)


def _train_plan(clips: Sequence[ClipInfo], spec: BatchSpec, rank: int, world_size: int) -> Iterator[PlannedBatch]:
    owner = assign_ranks(clips, world_size, spec.seed, spec.weighted)
    per_rank = [[c for c in clips if owner[c.key] == r] for r in range(world_size)]
    pending: list[dict[str, list[PlannedSample]]] = [{} for _ in range(world_size)]
    for epoch in itertools.count():
        # Every rank plans every rank's epoch (index only) to learn how many batches to pad to.
        epochs = [_epoch_batches(per_rank[r], spec, epoch, r, world_size, pending[r]) for r in range(world_size)]
        target = max(len(b) for b in epochs)
        yield from _pad(epochs[rank], target, per_rank[rank], spec, epoch, pending[rank])


def _val_plan(clips: Sequence[ClipInfo], spec: BatchSpec, rank: int, world_size: int) -> Iterator[PlannedBatch]:
    """One pass in (bucket, key) order; each bucket's last batch may be smaller. Batches are dealt
    out to ranks in turn and never padded, so every val clip is seen exactly once across ranks
    (rank batch counts differ by at most one: reduce val metrics after the pass, not per batch)."""
    by_bucket: dict[str, list[ClipInfo]] = {}
    for c in clips:
        by_bucket.setdefault(c.bucket, []).append(c)
    batches = []
    for bucket in sorted(by_bucket):
        members = by_bucket[bucket]
        for i in range(0, len(members), spec.batch_size):
            chunk = members[i:i + spec.batch_size]
            samples = tuple(PlannedSample(c.key, start_time(c, spec, 0, 0)) for c in chunk)
            batches.append(PlannedBatch(bucket, samples, 0))
    yield from batches[rank::world_size]


def plan_batches(clips: Sequence[ClipInfo], spec: BatchSpec, rank: int = 0,
                 world_size: int = 1) -> Iterator[PlannedBatch]:
    """The batches rank ``rank`` will get, from the index alone: infinite for train, one pass for val.

    ``clips`` are all the dataset's clips; the ones not eligible for ``spec`` are left out here.
    Raises DataError when none are eligible or there are fewer than ranks.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size): rank={rank}, world_size={world_size}")
    usable = eligible_clips(clips, spec)
    if not usable:
        raise DataError(f"no {spec.describe()}")
    if spec.split == "val":
        return _val_plan(usable, spec, rank, world_size)
    if len(usable) < world_size:
        raise DataError(f"only {len(usable)} {spec.describe()}, fewer than the {world_size} ranks")
    if spec.weighted and sum(c.weight for c in usable) <= 0:
        raise DataError(f"every one of the {len(usable)} {spec.describe()} has sampling_weight 0")
    return _train_plan(usable, spec, rank, world_size)


# -- decoding ------------------------------------------------------------------------------------
def _cover_crop(frame: av.VideoFrame, h: int, w: int) -> np.ndarray:
    """Scale to cover (h, w) keeping the aspect ratio, then center-crop: (h, w, 3) uint8 RGB."""
    s = max(h / frame.height, w / frame.width)
    sh, sw = max(h, round(frame.height * s)), max(w, round(frame.width * s))
    arr = frame.to_ndarray(width=sw, height=sh, format="rgb24", interpolation="AREA")
    y0, x0 = (sh - h) // 2, (sw - w) // 2
    return arr[y0:y0 + h, x0:x0 + w]


def decode_frames(data: bytes, times: Sequence[float], size: tuple[int, int]) -> np.ndarray:
    """The decoded frame nearest to each time (seconds from the stream start), cover-cropped to
    ``size`` = (h, w): (T, h, w, 3) uint8. Decodes from the keyframe before ``times[0]`` and
    stops after the last time."""
    h, w = size
    out: list[np.ndarray | None] = [None] * len(times)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        base = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        if times[0] > 1.0:
            container.seek(int((times[0] + base) / stream.time_base), stream=stream, backward=True)
        j = 0
        prev_t, prev_frame, prev_arr = 0.0, None, None
        for n, frame in enumerate(container.decode(stream)):
            t = (frame.time if frame.time is not None else n / float(stream.average_rate or 1)) - base
            if prev_frame is not None:
                while j < len(times) and times[j] < (prev_t + t) / 2:  # prev is the nearest frame
                    prev_arr = prev_arr if prev_arr is not None else _cover_crop(prev_frame, h, w)
                    out[j], j = prev_arr, j + 1
            if j == len(times):
                break
            prev_t, prev_frame, prev_arr = t, frame, None
        if prev_frame is None:
            raise ValueError("no video frames")
        while j < len(times):  # past the last frame: hold it
            prev_arr = prev_arr if prev_arr is not None else _cover_crop(prev_frame, h, w)
            out[j], j = prev_arr, j + 1
    return np.stack(out)


def decode_all_frames(data: bytes, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Every frame of the stream, cover-cropped to ``size``: (times (N,), frames (N, h, w, 3))."""
    h, w = size
    times, frames = [], []
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        base = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        for n, frame in enumerate(container.decode(stream)):
            times.append((frame.time if frame.time is not None else n / float(stream.average_rate or 1)) - base)
            frames.append(_cover_crop(frame, h, w))
    if not frames:
        raise ValueError("no video frames")
    return np.asarray(times, dtype=np.float64), np.stack(frames)


def pick_frames(frame_times: np.ndarray, frames: np.ndarray, times: Sequence[float]) -> np.ndarray:
    """The frame nearest to each time, as ``decode_frames`` picks it: frame k covers the times from
    the midpoint with the frame before to the midpoint with the next; before the first frame the
    first, past the last the last."""
    midpoints = (frame_times[:-1] + frame_times[1:]) / 2
    return frames[np.searchsorted(midpoints, np.asarray(times, dtype=np.float64), side="right")]


def decode_all_audio(data: bytes, rate: int) -> np.ndarray:
    """The whole audio stream as mono float32 at ``rate``."""
    chunks: list[np.ndarray] = []
    with av.open(io.BytesIO(data)) as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        for frame in container.decode(container.streams.audio[0]):
            chunks.extend(o.to_ndarray().reshape(-1) for o in resampler.resample(frame))
        chunks.extend(o.to_ndarray().reshape(-1) for o in resampler.resample(None))
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def cut_audio(pcm: np.ndarray, start_s: float, num_samples: int, rate: int) -> np.ndarray:
    """``num_samples`` of ``pcm`` from ``start_s``, zero-padded past its end (as ``decode_audio``)."""
    skip = max(0, round(start_s * rate))
    seg = pcm[skip:skip + num_samples]
    return seg if seg.size == num_samples else np.concatenate([seg, np.zeros(num_samples - seg.size, np.float32)])


def decode_audio(data: bytes, start_s: float, num_samples: int, rate: int) -> np.ndarray:
    """``num_samples`` of mono float32 audio from ``start_s``, resampled to ``rate``; zero-padded
    when the audio is shorter."""
    skip = max(0, round(start_s * rate))
    need = skip + num_samples
    chunks: list[np.ndarray] = []
    have = 0
    with av.open(io.BytesIO(data)) as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        for frame in container.decode(container.streams.audio[0]):
            for o in resampler.resample(frame):
                chunks.append(o.to_ndarray().reshape(-1))
                have += chunks[-1].size
            if have >= need:
                break
        for o in resampler.resample(None):
            chunks.append(o.to_ndarray().reshape(-1))
    pcm = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    seg = pcm[skip:need]
    if seg.size < num_samples:
        seg = np.concatenate([seg, np.zeros(num_samples - seg.size, np.float32)])
    return seg


class _ByteLRU:
    """An LRU cache bounded by the bytes of its values."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[tuple, tuple[object, int]] = OrderedDict()

    def get(self, key: tuple):
        hit = self._items.get(key)
        if hit is None:
            return None
        self._items.move_to_end(key)
        return hit[0]

    def put(self, key: tuple, value: object, nbytes: int) -> None:
        if nbytes > self.max_bytes or key in self._items:
            return
        self._items[key] = (value, nbytes)
        self.nbytes += nbytes
        while self.nbytes > self.max_bytes:
            _, (_, n) = self._items.popitem(last=False)
            self.nbytes -= n


class ShardDataset:
    """A curated reelflow dataset (local dir or ``s3://`` prefix) read as training batches."""

    MAX_SHARD_INDEXES = 256

    def __init__(self, dataset: str, storage: Storage | None = None, cache_dir: str | None = None,
                 decode_cache_bytes: int = DEFAULT_DECODE_CACHE_BYTES):
        self.dataset = str(dataset)
        self.storage = storage or Storage()
        self.cache_dir = cache_dir
        self.clips: dict[str, ClipInfo] = _read_index(self.storage, self.dataset)
        self.stats = DataStats()
        self._cache = _ByteLRU(decode_cache_bytes)
        self._members: OrderedDict[str, tuple[str, dict[str, tuple[int, int]]]] = OrderedDict()
        self._bad: dict[str, str] = {}  # key -> reason: a sample that failed once is not decoded again
        self._warned: set[str] = set()

    def __getstate__(self) -> dict:
        """Pickle (DataLoader workers under spawn) without the decode cache and shard indexes."""
        state = dict(self.__dict__)
        state["_cache"] = _ByteLRU(self._cache.max_bytes)
        state["_members"] = OrderedDict()
        return state

    def __len__(self) -> int:
        return len(self.clips)

    def eligible(self, spec: BatchSpec) -> list[str]:
        """Keys usable for ``spec`` (split, long enough for its frames at its fps, audio if asked)."""
        return [c.key for c in eligible_clips(self.clips.values(), spec)]

    def plan(self, spec: BatchSpec, rank: int = 0, world_size: int = 1, start_batch: int = 0) -> Iterator[PlannedBatch]:
        """The planned batches (keys and frame times, no pixels) that ``batches`` will decode."""
        planned = plan_batches(list(self.clips.values()), spec, rank, world_size)
        return itertools.islice(planned, start_batch, None)

    def batches(self, spec: BatchSpec, rank: int = 0, world_size: int = 1, start_batch: int = 0,
                have: Callable[[PlannedBatch, tuple[int, int]], bool] | None = None) -> Iterator[Batch]:
        """Decoded batches for ``rank``, from planned batch ``start_batch`` on (earlier ones are
        skipped without decoding). Raises DataError at once when no clip fits ``spec``."""
        planned = self.plan(spec, rank, world_size, start_batch)
        return self.decode_plan(zip(itertools.count(start_batch), planned), spec, have)

    def decode_plan(self, planned: Iterable[tuple[int, PlannedBatch]], spec: BatchSpec,
                    have: Callable[[PlannedBatch, tuple[int, int]], bool] | None = None) -> Iterator[Batch]:
        """Decode (position, planned batch) pairs; failed samples are dropped, an empty batch is
        skipped. ``have(planned, (h, w))`` True: the caller already holds what it needs of these
        samples (e.g. their latents), so the batch comes without pixels (``pixels`` None) and
        nothing is decoded. Audio batches are always decoded."""
        for position, pb in planned:
            if have is not None and not spec.audio_sample_rate and have(pb, bucket_size(pb.bucket, spec.resolution,
                                                                                       spec.multiple)):
                batch = Batch(pixels=None, captions=[self._caption(k, spec, position) for k in pb.keys],
                              keys=pb.keys,
                              bucket=pb.bucket)
            else:
                batch = self._decode_batch(pb, spec, position)
            if batch is not None:
                batch.position = position
                self.stats.batches += 1
                yield batch

    # -- one batch / one sample ------------------------------------------------------------------
    def _caption(self, key: str, spec: BatchSpec, position: int) -> str:
        clip = self.clips[key]
        return sample_caption(clip.caption, spec, clip.source_text, position, key)

    def _decode_batch(self, pb: PlannedBatch, spec: BatchSpec, position: int = 0) -> Batch | None:
        size = bucket_size(pb.bucket, spec.resolution, spec.multiple)
        got = [(s, d) for s in pb.samples if (d := self._sample(s, spec, size)) is not None]
        if not got:
            return None
        pixels = np.stack([d[0] for _, d in got])  # (B, T, H, W, 3) uint8
        pixels = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 4, 1, 2, 3))).float().div_(127.5).sub_(1.0)
        audio = torch.from_numpy(np.stack([d[1] for _, d in got])) if spec.audio_sample_rate else None
        return Batch(pixels=pixels, captions=[self._caption(s.key, spec, position) for s, _ in got],
                     keys=[s.key for s, _ in got], bucket=pb.bucket, audio=audio)

    def _sample(self, s: PlannedSample, spec: BatchSpec,
                size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None] | None:
        if s.key in self._bad:
            self.stats.record_failure(s.key, self._bad[s.key])
            return None
        ck = (s.key, size, spec.frames, spec.fps, spec.audio_sample_rate, round(s.start_s, 6))
        hit = self._cache.get(ck)
        if hit is not None:
            self.stats.cache_hits += 1
            self.stats.samples_decoded += 1
            return hit
        clip = self.clips[s.key]
        try:
            whole = self._whole_clip(clip, size, spec.audio_sample_rate)
            if whole is not None:  # cut from the clip decoded whole (cached as such, not per window)
                self.stats.samples_decoded += 1
                return self._cut(whole, s.start_s, spec)
            value = self._decode_sample(clip, s.start_s, spec, size)
        except Exception as e:  # a bad sample must never stop training
            self._fail(s.key, f"{type(e).__name__}: {e}")
            return None
        self._cache.put(ck, value, value[0].nbytes + (value[1].nbytes if value[1] is not None else 0))
        self.stats.samples_decoded += 1
        return value

    @staticmethod
    def _cut(whole: tuple[np.ndarray, np.ndarray, np.ndarray | None], start_s: float,
             spec: BatchSpec) -> tuple[np.ndarray, np.ndarray | None]:
        frame_times, frames, pcm = whole
        times = [start_s + i / spec.fps for i in range(spec.frames)]
        audio = cut_audio(pcm, start_s, spec.audio_samples, spec.audio_sample_rate) if pcm is not None else None
        return pick_frames(frame_times, frames, times), audio

    def _decode_sample(self, clip: ClipInfo, start_s: float, spec: BatchSpec,
                       size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
        times = [start_s + i / spec.fps for i in range(spec.frames)]
        frames = decode_frames(self._member(clip, "mp4"), times, size)
        audio = None
        if spec.audio_sample_rate:
            audio = decode_audio(self._member(clip, "flac"), start_s, spec.audio_samples, spec.audio_sample_rate)
        return frames, audio

    def _whole_clip(self, clip: ClipInfo, size: tuple[int, int],
                    rate: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        """Every frame of a small clip at ``size`` (and its audio at ``rate``), each decoded once
        and kept in the decode cache; None for a clip too large for that (WHOLE_CLIP_MAX_BYTES)."""
        fps = clip.fps if clip.fps > 0 else 30.0
        estimate = (clip.duration_s * fps + 2) * size[0] * size[1] * 3 + (clip.duration_s * (rate or 0) + 1) * 4
        if estimate > min(WHOLE_CLIP_MAX_BYTES, self._cache.max_bytes):  # too big, or no cache to keep it in
            return None
        frames = self._cached(("frames", clip.key, size), lambda: decode_all_frames(self._member(clip, "mp4"), size))
        pcm = None
        if rate:
            pcm = self._cached(("audio", clip.key, rate), lambda: decode_all_audio(self._member(clip, "flac"), rate))
        return (*frames, pcm)

    def _cached(self, key: tuple, decode: Callable[[], object]):
        hit = self._cache.get(key)
        if hit is None:
            hit = decode()
            self._cache.put(key, hit, sum(a.nbytes for a in (hit if isinstance(hit, tuple) else (hit,))))
        return hit

    def _fail(self, key: str, reason: str) -> None:
        self._bad[key] = reason
        self.stats.record_failure(key, reason)
        if key not in self._warned:
            self._warned.add(key)
            log.warning("skipping sample %s of %s: %s", key, self.dataset, reason)

    # -- tar members -------------------------------------------------------------------------------
    def _member(self, clip: ClipInfo, ext: str) -> bytes:
        path, members = self._shard_members(clip.shard)
        name = f"{clip.key}.{ext}"
        if name not in members:
            raise KeyError(f"no member {name} in {clip.shard}")
        offset, size = members[name]
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise OSError(f"{clip.shard} is truncated at {name}")
        return data

    def _shard_members(self, shard: str) -> tuple[str, dict[str, tuple[int, int]]]:
        """(local path, member name -> (data offset, size)), read once per shard (S3: one cached
        download through Storage.localize)."""
        hit = self._members.get(shard)
        if hit is not None:
            self._members.move_to_end(shard)
            return hit
        path = str(self.storage.localize(join(self.dataset, shard), self.cache_dir))
        with tarfile.open(path) as tf:
            members = {m.name: (m.offset_data, m.size) for m in tf.getmembers() if m.isfile()}
        self._members[shard] = (path, members)
        if len(self._members) > self.MAX_SHARD_INDEXES:
            self._members.popitem(last=False)
        return path, members


def _read_index(storage: Storage, dataset: str) -> dict[str, ClipInfo]:
    """The index columns planning needs (not the embeddings), one ClipInfo per clip."""
    uris = output_tables.uris(storage, dataset, output_tables.INDEX)
    if not uris:
        raise DataError(f"{dataset} is not a curated reelflow dataset: no {INDEX_FILE} (run `reelflow curate`)")
    clips: dict[str, ClipInfo] = {}
    for uri in uris:  # the single file, or the index's parts (large runs)
        try:
            pf = pq.ParquetFile(io.BytesIO(storage.read_bytes(uri)))
        except Exception as e:  # pyarrow raises several types for a file that is not parquet
            raise DataError(f"{uri} is not a readable parquet file: {e}") from None
        names = pf.schema_arrow.names
        missing = [c for c in INDEX_COLUMNS if c not in names]
        if missing:
            raise DataError(f"{uri} is not a curated reelflow index: missing columns {missing}")
        cols = [c for c in (*INDEX_COLUMNS, *OPTIONAL_COLUMNS) if c in names]
        clips.update((r["key"], ClipInfo.from_row(r)) for r in pf.read(columns=cols).to_pylist())
    if not clips:
        raise DataError(f"{dataset} has no clips (empty {INDEX_FILE})")
    return clips


class BatchIterable(torch.utils.data.IterableDataset):
    """Batches of one rank as an IterableDataset, for ``DataLoader(batch_size=None, num_workers=k)``.

    Worker i decodes planned batches i, i+k, ...; the DataLoader takes one from each worker in
    turn, so the stream keeps the plan's order. Each worker keeps its own stats and caches.
    In a process that has run Prefect flows in-process, pass ``multiprocessing_context="spawn"``:
    forked workers inherit Prefect's at-exit hooks, which fail in the child (exit code 1).
    """

    def __init__(self, dataset: ShardDataset, spec: BatchSpec, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0):
        super().__init__()
        self.dataset, self.spec = dataset, spec
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        dataset.plan(spec, rank, world_size)  # fail now, in the parent, when nothing fits the spec

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        planned = zip(itertools.count(self.start_batch), self.dataset.plan(self.spec, self.rank, self.world_size,
                                                                            self.start_batch))
        return self.dataset.decode_plan(itertools.islice(planned, worker, None, workers), self.spec)


class Prefetcher:
    """Decode the next batches in a background thread while the current one trains.

    PyAV decoding and torch kernels release the GIL, so the two overlap. ``depth`` batches are
    decoded ahead; an exception in the decoder (e.g. DataError) is raised from ``__next__`` in the
    training thread. Batches decoded ahead but never taken are simply re-planned on resume, since
    the loop counts positions of batches it took, not decoded ones.
    """

    _DONE = object()

    def __init__(self, source: Iterator[Batch], depth: int = 2):
        import queue
        import threading

        self._queue: "queue.Queue" = queue.Queue(maxsize=max(1, depth))
        self._source = source
        self._thread = threading.Thread(target=self._fill, daemon=True, name="batch-prefetch")
        self._thread.start()

    def _fill(self) -> None:
        try:
            for batch in self._source:
                self._queue.put(batch)
        except BaseException as e:  # handed to the consumer, raised there
            self._queue.put(e)
            return
        self._queue.put(self._DONE)

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> Batch:
        item = self._queue.get()
        if item is self._DONE:
            self._queue.put(item)  # stay exhausted
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item
