"""Near-duplicate clips from per-frame pHash sequences (see ``signatures.frame_phashes``).

Input: ``phashes``, an ``(n, F)`` uint64 array, F pHashes per clip sampled evenly over the clip.

Two clips are near-duplicates when their frame sequences agree: the *agreement* of A and B is the
fraction of A's sampled frames that have a frame of B within ``max_hamming`` bits at the same
sample position or up to ``max_shift`` samples away, taken the smaller of the two directions
(A->B, B->A). Range [0, 1]; 1 = every sampled frame has a close partner. A pair is confirmed when
agreement >= ``min_agreement``. Re-encodes and rescales of a clip sit at 0-4 bits per frame, a crop
of a few percent at 2-10 bits; different shots of the same video at >= 20 bits on most frames.

Candidates come from an index, never from all pairs (multi-index hashing, Norouzi et al. 2012):
``n_bands`` bands of each 64-bit hash (bit ranges, disjoint while n_bands * width <= 64, else
overlapping) are indexed; frames whose hashes are equal on a whole band are candidates, then their
full Hamming distance is checked. With disjoint bands, two hashes within ``n_bands - 1`` bits always
share a band (pigeonhole); farther ones often do, and a near-duplicate clip offers F frames to
collide. One band = one sort of all N = n*F hashes (O(N log N)): the hash is rotated so the band
is its most significant bits, so one uint64 sort groups each band value and orders its members by
the rest of the hash. Pairs are formed between entries at most ``window`` places apart inside a
group, which bounds the work at N * window per band even when real data piles many frames into one
bucket (black frames, title cards). The band width grows with log2(N) so that chance collisions
stay ~N/4 per band (``band_layout``). faiss's ``IndexBinaryMultiHash`` does the same search but
measured ~10x slower on this machine (800k hashes: 2.8 s to add, 2.7 s to range-search, against
0.1 s here), so the sort stays in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reelflow.curation.dedup.signatures import hamming


@dataclass(frozen=True)
class NearConfig:
    enabled: bool = True
    # Per-frame pHash distance (bits of 64) for "the same picture". Not a Movie Gen figure: measured
    # on the bikes sample, re-encodes / 0.75x rescales stay <= 4 bits, a 4% crop <= 10, while frames
    # an eighth of a second apart in the same shot already sit at a median of 10.
    max_hamming: int = 10
    min_agreement: float = 0.75  # 6 of 8 sampled frames must have a close partner
    max_shift: int = 1  # tolerated misalignment of the sampled frames, in samples
    n_bands: int = 4  # bands per hash, each one sort of all frame hashes (4 x 16 bits up to 64k hashes)
    band_bits: int | None = None  # None: log2(frame hashes) + 1, see band_layout
    window: int = 32  # max neighbours paired per entry inside one band bucket


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    """Bitwise rotate-left of uint64 values by ``r`` (a new array)."""
    r %= 64
    if r == 0:
        return x.copy()
    out = np.left_shift(x, np.uint64(r))
    out |= np.right_shift(x, np.uint64(64 - r))
    return out


def band_layout(n_entries: int, cfg: NearConfig) -> list[tuple[int, int]]:
    """(start bit, width) of the bands for an index of ``n_entries`` frame hashes.

    Width defaults to log2(n_entries) + 1 bits (16..32): two unrelated hashes share a band value
    with probability 2^-width, so each band yields about n_entries / 4 chance candidates - linear in
    n, where a fixed width would give ~n^2 / 2^width. Bands start evenly around the 64 bits and
    overlap (wrapping) when n_bands * width > 64.
    """
    idx_bits = max(1, (n_entries - 1).bit_length())
    width = cfg.band_bits or min(32, max(16, idx_bits + 1))
    starts = np.linspace(0, 64, cfg.n_bands + 1)[:-1].round().astype(int)
    return [(int(s), int(width)) for s in starts]


def unique_frames(phashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flattened (hash, clip, rank of the hash among its clip's distinct ones) with each clip's
    repeated hashes dropped: a static clip must not fill a bucket's window with pairs of itself.
    Entries come clip by clip, each clip's in hash order (the index's entry order)."""
    n, f = phashes.shape
    s = np.sort(phashes, axis=1)
    keep = np.ones_like(s, dtype=bool)
    keep[:, 1:] = s[:, 1:] != s[:, :-1]
    rank = np.cumsum(keep, axis=1) - 1
    clip = np.broadcast_to(np.arange(n, dtype=np.int64)[:, None], (n, f))
    return s[keep], clip[keep], rank[keep]


def candidate_pairs(phashes: np.ndarray, cfg: NearConfig = NearConfig(), stats: dict | None = None) -> np.ndarray:
    """``(m, 2)`` int64 clip pairs (i < j), unique, with at least one pair of frames within
    ``max_hamming`` bits found through the band index. ``stats``, when given, receives the counts of
    indexed frame hashes, frame pairs checked and candidate clip pairs (the work done)."""
    flat, clip, _ = unique_frames(np.ascontiguousarray(phashes, dtype=np.uint64))
    n, n_entries = phashes.shape[0], flat.size
    idx_bits = max(1, (n_entries - 1).bit_length())
    ids = np.arange(n_entries, dtype=np.uint64)
    low = np.uint64((1 << idx_bits) - 1)
    found: list[np.ndarray] = []
    checked = 0
    for start, width in band_layout(n_entries, cfg):
        if width + idx_bits > 64:
            raise ValueError(f"band of {width} bits + {idx_bits} index bits do not fit in 64")
        # One uint64 per entry: the hash rotated so the band is on top, its low bits replaced by
        # the entry's index. A plain (SIMD) sort then orders by band value, then by the rest of the
        # hash, and carries the index along - ~8x faster than an argsort.
        # (In-place steps: at millions of entries, fresh allocations cost as much as the sort.)
        packed = _rotl(flat, 64 - start - width)
        packed &= ~low
        packed |= ids
        packed.sort()
        key = packed >> np.uint64(64 - width)
        packed &= low
        order = packed.view(np.int64)
        for o in range(1, cfg.window + 1):
            pos = np.flatnonzero(key[:-o] == key[o:])
            if pos.size == 0:  # groups are contiguous: none longer than o either
                break
            p, q = order[pos], order[pos + o]
            a, b = clip[p], clip[q]
            ok = (a != b) & (hamming(flat[p], flat[q]) <= cfg.max_hamming)
            checked += pos.size
            a, b = a[ok], b[ok]
            found.append(np.minimum(a, b) * n + np.maximum(a, b))
    code = np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
    if stats is not None:
        stats.update(frame_entries=n_entries, frame_pairs_checked=checked, candidate_pairs=code.size)
    return np.stack([code // n, code % n], axis=1)


def agreement(a: np.ndarray, b: np.ndarray, max_hamming: int, max_shift: int = 1) -> np.ndarray:
    """Sequence agreement in [0, 1] of rows of ``a`` and ``b`` (both ``(m, F)`` uint64); see module doc."""
    a = np.atleast_2d(a)
    b = np.atleast_2d(b)
    m, f = a.shape
    best_ab = np.full((m, f), 65, np.int64)  # closest partner of each frame of a, in bits
    best_ba = np.full((m, f), 65, np.int64)
    for s in range(-max_shift, max_shift + 1):
        lo, hi = max(0, -s), min(f, f - s)  # a[i] against b[i + s]
        if hi <= lo:
            continue
        d = hamming(a[:, lo:hi], b[:, lo + s : hi + s])
        best_ab[:, lo:hi] = np.minimum(best_ab[:, lo:hi], d)
        best_ba[:, lo + s : hi + s] = np.minimum(best_ba[:, lo + s : hi + s], d)
    return np.minimum((best_ab <= max_hamming).mean(1), (best_ba <= max_hamming).mean(1))


def near_pairs(
    phashes: np.ndarray, cfg: NearConfig = NearConfig(), stats: dict | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confirmed near-duplicate pairs: ``(i, j, agreement)`` with i < j and agreement >= min_agreement
    (``stats``: see ``candidate_pairs``)."""
    phashes = np.asarray(phashes, dtype=np.uint64)
    if phashes.ndim != 2:
        raise ValueError(f"phashes must be (n, F) uint64, got shape {phashes.shape}")
    if phashes.shape[0] < 2:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0, np.float64)
    cand = candidate_pairs(phashes, cfg, stats)
    i, j = cand[:, 0], cand[:, 1]
    agr = agreement(phashes[i], phashes[j], cfg.max_hamming, cfg.max_shift)
    ok = agr >= cfg.min_agreement
    return i[ok], j[ok], agr[ok]
