"""training/data.py: planning from the index alone (determinism, ranks, resume, weighting, val
pass) on fake indexes, and decoding real curated shards (shapes, buckets, audio, bad samples)."""

from __future__ import annotations

import dataclasses
import io
import itertools
import logging
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from reelflow.training.data import (
    Batch,
    BatchIterable,
    BatchSpec,
    ClipInfo,
    DataError,
    ShardDataset,
    assign_ranks,
    bucket_size,
    cut_audio,
    decode_all_audio,
    decode_all_frames,
    decode_audio,
    decode_frames,
    pick_frames,
    plan_batches,
    sample_caption,
    split_of,
)


def fake_clips(n: int = 40, shards: int = 4, duration_s: float = 3.0, **overrides) -> list[ClipInfo]:
    """An index without tars: two aspect buckets, ``shards`` shards per the clip number."""
    clips = []
    for i in range(n):
        bucket = "16x9" if i % 3 else "9x16"
        clips.append(ClipInfo(key=f"k{i:04d}", shard=f"shards/{bucket}_2p5-4s/shard-{i % shards:06d}.tar",
                              bucket=bucket, duration_s=duration_s, fps=24.0, has_audio=i % 2 == 0,
                              caption=f"clip {i}", **overrides))
    return clips


def keys_of(planned) -> list[list[str]]:
    return [pb.keys for pb in planned]


def by_epoch(planned, epochs: int) -> dict[int, list]:
    out: dict[int, list] = {e: [] for e in range(epochs)}
    for pb in itertools.takewhile(lambda pb: pb.epoch < epochs, planned):
        out[pb.epoch].append(pb)
    return out


# -- sizes, splits ---------------------------------------------------------------------------------
def test_a_sample_caption_carries_the_rate_it_was_resampled_to_and_generation_prepends_it():
    from reelflow.models.configs import SampleConfig
    from reelflow.training.generate import conditioning_prompt

    video = BatchSpec(kind="video", resolution=64, multiple=8, frames=9, fps=8)
    image = BatchSpec(kind="image", resolution=64, multiple=8)
    caption = "FPS-24 Static shot. A red circle moves right."
    assert sample_caption(caption, video) == "FPS-8 Static shot. A red circle moves right."
    assert sample_caption(caption, image) == "Static shot. A red circle moves right."  # an image has no rate
    assert sample_caption("A red circle moves right.", video) == "A red circle moves right."  # no token used
    assert sample_caption("FPS-24x", video) == "FPS-24x"  # not a token
    trained = SampleConfig(height=64, width=64, fps=8, fps_token=True)
    assert conditioning_prompt("A red circle moves right.", trained) == "FPS-8 A red circle moves right."
    assert conditioning_prompt("FPS-16 A red circle.", trained) == "FPS-16 A red circle."  # its own token stays
    assert conditioning_prompt("A red circle.", SampleConfig(fps=8)) == "A red circle."  # trained without


def test_a_share_of_training_samples_is_captioned_with_the_source_s_own_words():
    caption = "FPS-24 Static shot. Red circle moving right. A red circle moves right."
    source = "A red circle moves right."
    spec = BatchSpec(kind="video", resolution=64, multiple=8, frames=9, fps=8, seed=3, source_caption_ratio=0.25)
    got = [sample_caption(caption, spec, source, position, f"k{i}") for position in range(100) for i in range(8)]
    assert set(got) == {"FPS-8 Static shot. Red circle moving right. A red circle moves right.", f"FPS-8 {source}"}
    assert 0.2 < got.count(f"FPS-8 {source}") / len(got) < 0.3  # the ratio, drawn per (position, key)
    again = [sample_caption(caption, spec, source, position, f"k{i}") for position in range(100) for i in range(8)]
    assert again == got  # the same draw on a resumed run
    image = BatchSpec(kind="image", resolution=64, multiple=8, source_caption_ratio=1.0)
    assert sample_caption(caption, image, source) == source  # an image: no rate token either way
    assert sample_caption(caption, image, "") == "Static shot. Red circle moving right. A red circle moves right."
    val = BatchSpec(kind="video", resolution=64, multiple=8, frames=9, fps=8, split="val", source_caption_ratio=1.0)
    assert sample_caption(caption, val, source) == "FPS-8 Static shot. Red circle moving right. A red circle moves right."
    with pytest.raises(ValueError, match="source_caption_ratio"):
        BatchSpec(kind="image", resolution=64, multiple=8, source_caption_ratio=1.5)


def test_bucket_size_keeps_aspect_and_area_on_the_multiple():
    assert bucket_size("16x9", 256, 16) == (192, 336)
    assert bucket_size("9x16", 256, 16) == (336, 192)
    assert bucket_size("1x1", 256, 16) == (256, 256)
    assert bucket_size("4x3", 768, 8) == (664, 888)
    assert bucket_size("16x9", 64, 64) == (64, 64)  # never below one multiple
    assert bucket_size("16x9", 8, 16) == (16, 16)
    for aspect in ("16x9", "9x16", "4x3", "3x4", "1x1"):
        h, w = bucket_size(aspect, 512, 8)
        a, b = map(int, aspect.split("x"))
        assert h % 8 == 0 and w % 8 == 0
        assert abs(w / h - a / b) < 0.03 and abs(w * h / 512**2 - 1) < 0.03
    with pytest.raises(ValueError, match="16x9"):
        bucket_size("wide", 256, 16)


def test_a_small_dataset_always_holds_one_clip_out():
    """With few clips the hash may hold none out; one is held out all the same (never in train)."""
    from reelflow.training.data import ClipInfo, eligible_clips

    clips = [ClipInfo(key=f"k{i}", shard="shards/a/shard-000000.tar", bucket="16x9", duration_s=3.0, fps=24,
                      has_audio=True) for i in range(3)]
    spec = BatchSpec(kind="image", resolution=32, multiple=8, frames=1, fps=8, batch_size=1, split="val",
                     val_fraction=1e-9, seed=0)
    (held,) = eligible_clips(clips, spec)
    train = eligible_clips(clips, dataclasses.replace(spec, split="train"))
    assert held.key not in {c.key for c in train} and len(train) == 2
    assert eligible_clips(clips, dataclasses.replace(spec, val_fraction=0.0)) == []


def test_split_of_is_stable_and_near_val_fraction():
    keys = [f"v{i:05d}_s0000_c00" for i in range(4000)]
    splits = [split_of(k, 0.2, seed=7) for k in keys]
    assert abs(splits.count("val") / len(keys) - 0.2) < 0.03
    assert splits == [split_of(k, 0.2, seed=7) for k in keys]
    assert splits != [split_of(k, 0.2, seed=8) for k in keys]
    assert {split_of(k, 0.0, 0) for k in keys} == {"train"} and {split_of(k, 1.0, 0) for k in keys} == {"val"}
    # Pinned: a val set must not move between runs, processes or Python versions (hash() is salted).
    assert "".join(s[0] for s in splits[:60]) == "tvtttttvtttttttttttvtvtvtvtvtvttttttvtttvttttvtttvvttttvtttv"


# -- planning on a fake index ----------------------------------------------------------------------
SPEC = BatchSpec(kind="image", resolution=64, multiple=8, batch_size=4, seed=3)


def test_plan_is_deterministic_and_single_bucket():
    clips = fake_clips()
    first = keys_of(itertools.islice(plan_batches(clips, SPEC), 50))
    assert first == keys_of(itertools.islice(plan_batches(clips, SPEC), 50))
    other_seed = BatchSpec(**{**SPEC.__dict__, "seed": 4})
    assert first != keys_of(itertools.islice(plan_batches(clips, other_seed), 50))
    bucket = {c.key: c.bucket for c in clips}
    for pb in itertools.islice(plan_batches(clips, SPEC), 50):
        assert len(pb.samples) == SPEC.batch_size and {bucket[k] for k in pb.keys} == {pb.bucket}
    epochs = by_epoch(plan_batches(clips, SPEC), 3)
    assert [pb.keys for pb in epochs[0]] != [pb.keys for pb in epochs[1]]  # reshuffled per epoch


@pytest.mark.parametrize("shards,world_size", [(4, 2), (1, 3), (7, 4)])
def test_ranks_get_disjoint_keys_and_equal_batches_per_epoch(shards, world_size):
    clips = fake_clips(n=45, shards=shards)
    plans = [by_epoch(plan_batches(clips, SPEC, rank=r, world_size=world_size), 6) for r in range(world_size)]
    for e in range(6):
        counts = {len(p[e]) for p in plans}
        assert len(counts) == 1 and counts != {0}, (e, counts)
    rank_keys = [{k for pbs in p.values() for pb in pbs for k in pb.keys} for p in plans]
    for a, b in itertools.combinations(rank_keys, 2):
        assert not a & b
    assert set().union(*rank_keys) == {c.key for c in clips}


def test_ranks_split_by_shard_when_shards_share_out_evenly_else_by_clip():
    clips = fake_clips(n=40, shards=4)
    owner = assign_ranks(clips, world_size=2, seed=0, weighted=False)
    for shard in {c.shard for c in clips}:
        assert len({owner[c.key] for c in clips if c.shard == shard}) == 1
    owner = assign_ranks(clips, world_size=8, seed=0, weighted=False)  # 8 uneven shards (3-7 clips): by clip
    assert Counter(owner.values()) == Counter({r: 5 for r in range(8)})
    owner = assign_ranks(clips, world_size=10, seed=0, weighted=False)  # fewer shards than ranks
    assert Counter(owner.values()) == Counter({r: 4 for r in range(10)})


def test_weighted_repetition_follows_sampling_weight():
    clips = [*fake_clips(n=6, shards=1),
             ClipInfo("heavy", "shards/a.tar", "16x9", 3.0, 24.0, True, weight=2.6),
             ClipInfo("light", "shards/a.tar", "16x9", 3.0, 24.0, True, weight=0.4)]
    spec = BatchSpec(kind="image", resolution=64, multiple=8, batch_size=1, seed=5)
    epochs = 400
    counts = Counter(k for pbs in by_epoch(plan_batches(clips, spec), epochs).values() for pb in pbs for k in pb.keys)
    assert abs(counts["heavy"] / counts["k0001"] - 2.6) < 0.25
    assert abs(counts["light"] / epochs - 0.4) < 0.08
    assert abs(counts["k0001"] / epochs - 1.0) < 0.01  # weight 1: exactly once per epoch
    flat = BatchSpec(**{**spec.__dict__, "weighted": False})
    counts = Counter(k for pbs in by_epoch(plan_batches(clips, flat), 50).values() for pb in pbs for k in pb.keys)
    assert set(counts.values()) == {50}


def test_train_frame_times_fit_the_clip_and_vary():
    clips = fake_clips(n=8, shards=1, duration_s=2.5)
    spec = BatchSpec(kind="video", resolution=64, multiple=8, frames=17, fps=16, batch_size=2, seed=1)
    starts = [s.start_s for pb in itertools.islice(plan_batches(clips, spec), 200) for s in pb.samples]
    assert min(starts) >= 0 and max(starts) + (spec.frames - 1) / spec.fps <= 2.5 - 1 / 24 + 1e-9
    assert len(set(starts)) > 5
    assert all(abs(t * 24 - round(t * 24)) < 1e-6 for t in starts)  # on the source frame grid


def test_val_pass_is_finite_and_covers_each_val_key_once():
    clips = fake_clips(n=60, shards=3)
    spec = BatchSpec(kind="image", resolution=64, multiple=8, batch_size=4, split="val", val_fraction=0.3, seed=2)
    val_keys = {c.key for c in clips if split_of(c.key, 0.3, 2) == "val"}
    assert 8 < len(val_keys) < 30
    planned = list(plan_batches(clips, spec))
    keys = [k for pb in planned for k in pb.keys]
    assert sorted(keys) == sorted(val_keys)
    per_bucket = Counter(c.bucket for c in clips if c.key in val_keys)
    # Each bucket's last, partial batch is kept: ceil(n / 4) batches per bucket.
    assert len(planned) == sum(-(-n // 4) for n in per_bucket.values())
    assert keys_of(planned) == keys_of(plan_batches(clips, spec))
    ranks = [list(plan_batches(clips, spec, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) - len(ranks[1]) in (0, 1)  # never padded: each val key once across ranks
    assert sorted(k for r in ranks for pb in r for k in pb.keys) == sorted(val_keys)
    train = BatchSpec(**{**spec.__dict__, "split": "train"})
    train_keys = {k for pb in itertools.islice(plan_batches(clips, train), 100) for k in pb.keys}
    assert not train_keys & val_keys


def test_no_eligible_clip_raises_data_error_naming_the_spec():
    clips = fake_clips(n=6, duration_s=1.0)
    with pytest.raises(DataError, match=r"at least 2 s .*train split"):
        plan_batches(clips, BatchSpec(kind="video", resolution=64, multiple=8, frames=32, fps=16))
    silent = [ClipInfo(c.key, c.shard, c.bucket, 3.0, 24.0, False) for c in clips]
    with pytest.raises(DataError, match="with audio"):
        plan_batches(silent, BatchSpec(kind="image", resolution=64, multiple=8, audio_sample_rate=16000))
    with pytest.raises(DataError, match="val split"):
        plan_batches(clips, BatchSpec(kind="image", resolution=64, multiple=8, split="val"))


def test_not_a_dataset_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="not a curated reelflow dataset"):
        ShardDataset(str(tmp_path))
    pq.write_table(pa.table({"key": ["a"], "caption": ["x"]}), tmp_path / "index.parquet")
    with pytest.raises(DataError, match="missing columns"):
        ShardDataset(str(tmp_path))
    (tmp_path / "index.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="parquet"):
        ShardDataset(str(tmp_path))
    empty = {c: pa.array([], t) for c, t in [("key", pa.string()), ("shard", pa.string()), ("duration_s", pa.float64()),
                                              ("fps", pa.float64()), ("aspect_bucket", pa.string()),
                                              ("has_audio", pa.bool_())]}
    pq.write_table(pa.table(empty), tmp_path / "index.parquet")
    with pytest.raises(DataError, match="no clips"):
        ShardDataset(str(tmp_path))


# -- decoding helpers ------------------------------------------------------------------------------
def test_decode_frames_picks_the_nearest_frame(tmp_path):
    from reelflow.training.generate import write_mp4

    levels = np.arange(48) * 5  # frame i is a flat grey of level 5 * i: its index reads back
    frames = np.repeat(levels[:, None, None, None], 3, axis=3) * np.ones((1, 32, 48, 3))
    path = write_mp4(tmp_path / "ramp.mp4", frames.astype(np.uint8), fps=24, crf=0)
    data = path.read_bytes()
    for t0 in (0.0, 0.5, 1.5):  # 1.5 s seeks
        times = [t0 + i / 8 for i in range(4)]
        got = decode_frames(data, times, (16, 16))
        assert got.shape == (4, 16, 16, 3) and got.dtype == np.uint8
        idx = np.round(got.reshape(4, -1).mean(1) / 5).astype(int)
        assert idx.tolist() == [round(t * 24) for t in times]
    held = decode_frames(data, [1.99, 5.0], (8, 8)).reshape(2, -1).mean(1)  # past the end: the last frame
    assert np.abs(held - 235).max() < 4


def test_a_window_cut_from_the_whole_decoded_clip_is_the_window_decoded_alone(tmp_path):
    from reelflow.training.generate import write_mp4

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (40, 24, 40, 3), dtype=np.uint8)  # every frame distinct
    data = write_mp4(tmp_path / "noise.mp4", frames, fps=24, crf=0).read_bytes()
    frame_times, whole = decode_all_frames(data, (16, 16))
    assert whole.shape == (40, 16, 16, 3) and len(frame_times) == 40
    for t0 in (0.0, 0.02, 0.5, 1.2, 1.6):  # 1.2 s and on seek; 1.6 s runs past the end
        times = [t0 + i / 8 for i in range(5)]
        assert np.array_equal(pick_frames(frame_times, whole, times), decode_frames(data, times, (16, 16)))


def flac_tone(rate: int = 48000, seconds: float = 2.0) -> bytes:
    import av

    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate)).astype(np.float32)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="flac") as c:
        s = c.add_stream("flac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray((tone * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def test_audio_cut_from_the_whole_stream_is_the_span_decoded_alone():
    data = flac_tone()
    pcm = decode_all_audio(data, 16000)
    for start, n in ((0.0, 32000), (0.5, 8000), (1.5, 16000), (1.99, 4000)):
        assert np.array_equal(cut_audio(pcm, start, n, 16000), decode_audio(data, start, n, 16000))


def test_decode_audio_cuts_the_span_and_pads(tmp_path):
    data = flac_tone()
    full = decode_audio(data, 0.0, 32000, 16000)
    assert full.shape == (32000,) and full.dtype == np.float32 and 0.4 < np.abs(full).max() < 0.6
    part = decode_audio(data, 0.5, 8000, 16000)
    assert np.allclose(part, full[8000:16000], atol=1e-4)
    tail = decode_audio(data, 1.5, 16000, 16000)
    assert np.abs(tail[:7000]).max() > 0.4 and not tail[8100:].any()  # 0.5 s of audio, then zeros


# -- real curated shards ---------------------------------------------------------------------------
def check_batch(b: Batch, spec: BatchSpec, dataset: ShardDataset) -> None:
    h, w = bucket_size(b.bucket, spec.resolution, spec.multiple)
    assert b.pixels.shape == (len(b.keys), 3, spec.frames, h, w) and b.pixels.dtype == torch.float32
    assert -1.0 <= b.pixels.min() < b.pixels.max() <= 1.0
    assert {dataset.clips[k].bucket for k in b.keys} == {b.bucket}
    assert all("moving" in c for c in b.captions)
    # curation captions carry the source rate's token (FPS-24); a sample carries the rate it was
    # resampled to, an image none (training/captions.py)
    assert all(dataset.clips[k].caption.startswith("FPS-24 ") for k in b.keys)
    sources = [dataset.clips[k].caption.removeprefix("FPS-24 ") for k in b.keys]
    want = sources if spec.kind == "image" else [f"FPS-{spec.fps:g} {c}" for c in sources]
    assert b.captions == want


@pytest.mark.integration
def test_image_batches_from_real_shards(shapes_dataset):
    ds = ShardDataset(str(shapes_dataset.path))
    spec = BatchSpec(kind="image", resolution=64, multiple=8, batch_size=3, seed=1)
    assert sorted(ds.eligible(spec)) == sorted(shapes_dataset.keys)
    seen = list(itertools.islice(ds.batches(spec), 8))
    for b in seen:
        check_batch(b, spec, ds)
        assert len(b.keys) == 3 and b.audio is None
    assert {b.bucket for b in seen} == {"16x9", "9x16"}
    portrait = next(b for b in seen if b.bucket == "9x16")
    assert portrait.pixels.shape[-2] > portrait.pixels.shape[-1]
    assert ds.stats.samples_failed == 0 and ds.stats.batches == 8
    # the index carries the manifest's description: a stage with source_caption_ratio 1 trains on it
    own = BatchSpec(kind="image", resolution=64, multiple=8, batch_size=3, seed=1, source_caption_ratio=1.0)
    b = next(iter(ds.batches(own)))
    assert b.captions == [ds.clips[k].source_text for k in b.keys]
    assert all(c.startswith("A ") and " moves " in c and "moving" not in c for c in b.captions)


@pytest.mark.integration
def test_video_batches_with_audio_from_real_shards(shapes_dataset):
    ds = ShardDataset(str(shapes_dataset.path))
    spec = BatchSpec(kind="video", resolution=64, multiple=16, frames=9, fps=4, batch_size=2, audio_sample_rate=16000)
    loud = 0
    for b in itertools.islice(ds.batches(spec), 6):
        check_batch(b, spec, ds)
        assert b.audio is not None and b.audio.shape == (len(b.keys), 36000) and b.audio.dtype == torch.float32
        assert b.audio.abs().max() <= 1.0
        loud += int((b.audio.abs().amax(dim=1) > 0.05).sum())
        assert (b.pixels[:, :, 0] != b.pixels[:, :, -1]).any()  # the shape moves
    assert loud > 0  # bounce clicks come through
    too_long = BatchSpec(kind="video", resolution=64, multiple=16, frames=64, fps=16)
    with pytest.raises(DataError, match="at least 4 s"):
        ds.batches(too_long)


@pytest.mark.integration
def test_random_windows_cut_from_clips_decoded_once_match_window_decodes(shapes_dataset, monkeypatch):
    import reelflow.training.data as data

    spec = BatchSpec(kind="video", resolution=32, multiple=8, frames=5, fps=8, batch_size=4, audio_sample_rate=16000)
    images = BatchSpec(kind="image", resolution=32, multiple=8, batch_size=4)
    decodes = []
    whole_decode = data.decode_all_frames
    monkeypatch.setattr(data, "decode_all_frames", lambda *a: decodes.append(1) or whole_decode(*a))
    ds = ShardDataset(str(shapes_dataset.path))
    cut = [list(itertools.islice(ds.batches(s), 12)) for s in (spec, images)]
    # two epochs of each kind: every clip decoded once per size, however many windows it gave
    assert len(decodes) == len(ds.clips) and sum(len(b.keys) for b in cut[0]) > 1.5 * len(ds.clips)
    monkeypatch.setattr(data, "WHOLE_CLIP_MAX_BYTES", 0)  # every window decoded on its own
    alone = [list(itertools.islice(ShardDataset(str(shapes_dataset.path)).batches(s), 12)) for s in (spec, images)]
    assert len(decodes) == len(ds.clips)
    for mine, theirs in zip(cut, alone):
        assert [b.keys for b in mine] == [b.keys for b in theirs]
        assert all(torch.equal(a.pixels, b.pixels) for a, b in zip(mine, theirs))
    assert all(torch.equal(a.audio, b.audio) for a, b in zip(cut[0], alone[0]))


@pytest.mark.integration
def test_start_batch_resumes_exactly_where_a_run_stopped(shapes_dataset):
    spec = BatchSpec(kind="video", resolution=32, multiple=8, frames=5, fps=8, batch_size=2, seed=9)
    fresh = list(itertools.islice(ShardDataset(str(shapes_dataset.path)).batches(spec), 9))
    resumed_ds = ShardDataset(str(shapes_dataset.path))
    resumed = list(itertools.islice(resumed_ds.batches(spec, start_batch=5), 4))
    assert [b.keys for b in resumed] == [b.keys for b in fresh[5:]]
    assert [b.position for b in resumed] == [5, 6, 7, 8]
    assert all(torch.equal(a.pixels, b.pixels) for a, b in zip(resumed, fresh[5:]))
    assert resumed_ds.stats.samples_decoded == 8  # the skipped batches were never decoded


@pytest.mark.integration
def test_batches_the_caller_already_holds_come_without_decoding(shapes_dataset):
    spec = BatchSpec(kind="video", resolution=32, multiple=8, frames=5, fps=8, batch_size=2, window="start")
    ds = ShardDataset(str(shapes_dataset.path))
    held: set[str] = set()
    sizes: set[tuple[int, int]] = set()

    def have(pb, size):
        sizes.add(size)
        return all(k in held for k in pb.keys)

    got = []
    for b in itertools.islice(ds.batches(spec, have=have), 12):
        got.append(b)
        if b.pixels is not None:
            held.update(b.keys)  # the caller now holds these samples (e.g. their latents)
    skipped = [b for b in got if b.pixels is None]
    assert skipped and all(set(b.keys) <= held and b.captions == [sample_caption(ds.clips[k].caption, spec) for k in b.keys]
               for b in skipped)
    assert ds.stats.samples_decoded == 2 * (len(got) - len(skipped))
    assert sizes == {bucket_size(b.bucket, 32, 8) for b in got}  # the size each batch would decode at
    plain = list(itertools.islice(ShardDataset(str(shapes_dataset.path)).batches(spec), 12))
    assert [b.keys for b in got] == [b.keys for b in plain] and [b.position for b in got] == list(range(12))


@pytest.mark.integration
def test_ranks_on_real_shards_are_disjoint_and_in_step(shapes_dataset):
    spec = BatchSpec(kind="image", resolution=32, multiple=8, batch_size=2, weighted=False)
    ds = ShardDataset(str(shapes_dataset.path))
    plans = [by_epoch(ds.plan(spec, rank=r, world_size=2), 4) for r in range(2)]
    for e in range(4):
        assert len(plans[0][e]) == len(plans[1][e])
    keys = [{k for pbs in p.values() for pb in pbs for k in pb.keys} for p in plans]
    assert not keys[0] & keys[1]
    b0 = next(ds.batches(spec, rank=1, world_size=2))
    assert set(b0.keys) <= keys[1]


@pytest.mark.integration
def test_val_pass_on_real_shards(shapes_dataset):
    ds = ShardDataset(str(shapes_dataset.path))
    spec = BatchSpec(kind="image", resolution=32, multiple=8, batch_size=4, split="val", val_fraction=0.5, seed=4)
    val = ds.eligible(spec)
    assert 0 < len(val) < len(shapes_dataset.keys)
    first, second = list(ds.batches(spec)), list(ds.batches(spec))
    assert sorted(k for b in first for k in b.keys) == sorted(val)
    assert all(torch.equal(a.pixels, b.pixels) for a, b in zip(first, second))  # middle frame: deterministic
    # spawn: this process ran Prefect flows (the fixture), and forked workers inherit its at-exit hooks.
    loader = torch.utils.data.DataLoader(BatchIterable(ds, spec), batch_size=None, num_workers=2,
                                         multiprocessing_context="spawn")
    assert [b.keys for b in loader] == [b.keys for b in first]  # workers keep the plan's order
    assert [b.position for b in first] == list(range(len(first)))


def copy_dataset(src: Path, dst: Path) -> Path:
    dst.mkdir()
    shutil.copyfile(src / "index.parquet", dst / "index.parquet")
    shutil.copytree(src / "shards", dst / "shards")
    return dst


def rewrite_tar(path: Path, edit) -> None:
    """Rewrite a tar, letting ``edit(name, data)`` return new bytes or None (drop the member)."""
    with tarfile.open(path) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    with tarfile.open(path, "w") as tf:
        for m, data in members:
            new = edit(m.name, data)
            if new is not None:
                m.size = len(new)
                tf.addfile(m, io.BytesIO(new))


@pytest.mark.integration
def test_corrupt_or_missing_members_are_skipped_and_reported(shapes_dataset, tmp_path, caplog):
    out = copy_dataset(shapes_dataset.path, tmp_path / "bad")
    land = sorted(shapes_dataset.buckets["16x9"])
    garbled, missing = land[0], land[1]
    for tar in (out / "shards").rglob("*.tar"):
        rewrite_tar(tar, lambda name, data: (b"\x00garbage" * 300 if name == f"{garbled}.mp4"
                                             else None if name == f"{missing}.mp4" else data))
    ds = ShardDataset(str(out))
    spec = BatchSpec(kind="image", resolution=32, multiple=8, batch_size=len(land), split="val", val_fraction=1.0)
    with caplog.at_level(logging.WARNING, logger="reelflow.training.data"):
        got = list(ds.batches(spec))
        list(ds.batches(spec))  # a second pass: counted again, not logged again
    keys = [k for b in got for k in b.keys]
    assert sorted(keys) == sorted(set(shapes_dataset.keys) - {garbled, missing})
    assert next(b for b in got if b.bucket == "16x9").pixels.shape[0] == len(land) - 2  # the smaller batch
    assert set(ds.stats.failures) == {garbled, missing} and ds.stats.samples_failed == 4
    assert "no member" in ds.stats.failures[missing]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and any(garbled in w for w in warnings)
    # One sample per batch: a batch with nothing left is skipped, and positions show the gap.
    single = BatchSpec(**{**spec.__dict__, "batch_size": 1})
    planned = [pb.keys[0] for pb in ds.plan(single)]
    got = list(ds.batches(single))
    assert [b.position for b in got] == [i for i, k in enumerate(planned) if k not in (garbled, missing)]


@pytest.mark.integration
def test_reads_a_dataset_on_s3_like_a_local_one(shapes_dataset, s3_server, tmp_path):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket="training-data")
    root = shapes_dataset.path
    for path in [root / "index.parquet", *sorted((root / "shards").rglob("*.tar"))]:
        client.upload_file(str(path), "training-data", f"shapes/{path.relative_to(root)}")
    with pytest.raises(DataError, match="not a curated reelflow dataset"):
        ShardDataset("s3://training-data/nothing-here")
    spec = BatchSpec(kind="image", resolution=32, multiple=8, batch_size=4, split="val", val_fraction=1.0)
    remote = list(ShardDataset("s3://training-data/shapes", cache_dir=str(tmp_path / "cache")).batches(spec))
    local = list(ShardDataset(str(root)).batches(spec))
    assert [b.keys for b in remote] == [b.keys for b in local]
    assert all(torch.equal(a.pixels, b.pixels) for a, b in zip(remote, local))
    assert len(list((tmp_path / "cache").glob("*.tar"))) == len(list((root / "shards").rglob("*.tar")))


def test_batches_are_decoded_ahead_only_where_a_core_is_free():
    import os

    from reelflow.training.loop import prefetch_depth

    cores = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(cores)
        assert prefetch_depth(torch.device("cpu"), 2) == 0  # torch uses every core: decode inline
        assert prefetch_depth(torch.device("cuda"), 2) == 2  # the GPU computes: the CPU decodes ahead
        if cores > 1:
            torch.set_num_threads(cores - 1)
            assert prefetch_depth(torch.device("cpu"), 2) == 2
    finally:
        torch.set_num_threads(before)


def test_prefetcher_keeps_order_and_raises_decoder_errors_in_the_consumer():
    from reelflow.training.data import DataError, Prefetcher

    assert list(Prefetcher(iter(range(7)), depth=2)) == list(range(7))

    def broken():
        yield 1
        raise DataError("no clips of at least 9 s")

    it = Prefetcher(broken(), depth=3)
    assert next(it) == 1
    with pytest.raises(DataError, match="at least 9 s"):
        next(it)


def test_a_start_window_always_begins_at_the_clip_start_and_random_does_not():
    from reelflow.training.data import ClipInfo, start_time

    clip = ClipInfo(key="k", shard="s.tar", bucket="1x1", duration_s=4.0, fps=24.0, has_audio=False)
    fixed = BatchSpec(kind="video", resolution=64, multiple=8, frames=9, fps=8, window="start")
    rand = BatchSpec(kind="video", resolution=64, multiple=8, frames=9, fps=8)
    assert {start_time(clip, fixed, e, c) for e in range(5) for c in range(3)} == {0.0}
    assert len({start_time(clip, rand, e, c) for e in range(5) for c in range(3)}) > 1
    with pytest.raises(ValueError, match="window"):
        BatchSpec(kind="video", resolution=64, multiple=8, frames=9, fps=8, window="middle")


def test_a_bucket_filter_keeps_only_the_named_aspect_buckets():
    from reelflow.training.data import ClipInfo, eligible_clips

    clips = [ClipInfo(key=f"k{i}", shard="s.tar", bucket=b, duration_s=3.0, fps=24.0, has_audio=False)
             for i, b in enumerate(["1x1", "16x9", "1x1", "4x3"])]
    spec = BatchSpec(kind="video", resolution=64, multiple=8, frames=9, fps=8, buckets=("1x1",))
    assert [c.key for c in eligible_clips(clips, spec)] == ["k0", "k2"]
    assert "in bucket(s) 1x1" in spec.describe()
    assert len(eligible_clips(clips, dataclasses.replace(spec, buckets=None))) == 4
