"""Near and semantic dedup at scale, on synthetic signatures with planted duplicates.

For each size n and each level, a fresh subprocess builds the data and runs that level of
``run_dedup`` (index/partitioning + confirmation + grouping + decisions), then reports:

* wall and CPU time of the level (CPU time, summed over threads, is steadier on a shared
  machine), and the wall time's ratio to baselines measured in the same process: one ``np.sort`` of
  the n*8 frame hashes (near; the floor of any sort-based index) or one brute-force pass of the
  embeddings against sqrt(n) centroids (semantic), and all-pairs comparison timed on a subset and
  extrapolated to n (the cost the index avoids);
* peak RSS of the process (``ru_maxrss``: faiss and BLAS allocate outside Python's heap), next to
  the size of the input arrays;
* recall: the fraction of planted (original, copy) pairs that end in one group;
* false merges: dropped clips whose kept clip is not from their planted group, including the
  planted hard negatives (near: half the frames shared; semantic: cosine ~0.97 to an original);
* log-log slope of time between successive sizes (1.0 = linear, 2.0 = all-pairs).

Data. near: n clips x 8 random 64-bit pHashes; 1% of clips are originals with 1-3 copies each;
each copy frame gets up to 8 random bit flips (0-8 draws, positions with replacement) and a
quarter of the copies are shifted by one sample; 0.5% hard negatives share 4 of 8 frames with an
original. semantic: n random unit vectors (dim 512 by default); the same 1% originals with 1-3
copies at cosine 0.993-0.999, and 0.5% hard negatives at cosine 0.97 to an original.

    .venv/bin/python bench/dedup_scale.py [--sizes 100000 1000000] [--dim 512] [--levels near semantic]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import checkout  # noqa: E402,F401  (reelflow from this checkout when it is not installed)
import numpy as np

F = 8  # sampled frames per clip


def _plant(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origin, hard_of, copy_rows): origin[r] = planted group of row r (its original's row, or r);
    hard negatives of an original are listed in hard_of (row -> original row, -1 elsewhere)."""
    n_orig = n // 100
    copies = rng.integers(1, 4, n_orig)
    n_copy = int(copies.sum())
    n_hard = n // 200
    if n_orig + n_copy + n_hard > n:
        raise ValueError("n too small to plant duplicates")
    perm = rng.permutation(n)
    orig_rows = perm[:n_orig]
    copy_rows = perm[n_orig : n_orig + n_copy]
    hard_rows = perm[n_orig + n_copy : n_orig + n_copy + n_hard]
    origin = np.arange(n)
    origin[copy_rows] = np.repeat(orig_rows, copies)
    hard_of = np.full(n, -1)
    hard_of[hard_rows] = rng.choice(orig_rows, n_hard)
    return origin, hard_of, copy_rows


def make_phashes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ph = rng.integers(0, np.iinfo(np.uint64).max, size=(n, F), dtype=np.uint64, endpoint=True)
    origin, hard_of, copy_rows = _plant(n, rng)

    def flip(rows: np.ndarray, max_bits: int) -> np.ndarray:
        out = ph[origin[rows]].copy()
        for f in range(F):
            k = rng.integers(0, max_bits + 1, rows.size)
            for b in range(max_bits):  # flip bit positions drawn per row, up to k of them
                pos = rng.integers(0, 64, rows.size).astype(np.uint64)
                out[:, f] ^= np.where(b < k, np.uint64(1) << pos, np.uint64(0))
        return out

    copied = flip(copy_rows, 8)
    shift = rng.random(copy_rows.size) < 0.25  # drop the first sample, append a fresh one
    copied[shift] = np.concatenate([copied[shift, 1:], ph[copy_rows[shift], :1]], axis=1)
    ph[copy_rows] = copied
    hard = np.flatnonzero(hard_of >= 0)
    ph[hard, :4] = ph[hard_of[hard], :4] ^ np.uint64(3)  # first half: the original's frames, 2 bits off
    return ph, origin


def make_embeddings(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    origin, hard_of, copy_rows = _plant(n, rng)

    def near(rows: np.ndarray, base_rows: np.ndarray, cos: np.ndarray) -> np.ndarray:
        # Unit vector at the given cosine to its base: cos * base + sin * (noise orthogonal to base).
        base = x[base_rows]
        noise = rng.standard_normal(base.shape, dtype=np.float32)
        noise -= np.einsum("ij,ij->i", noise, base)[:, None] * base
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        return cos[:, None] * base + np.sqrt(1 - cos**2)[:, None] * noise

    x[copy_rows] = near(copy_rows, origin[copy_rows], rng.uniform(0.993, 0.999, copy_rows.size).astype(np.float32))
    hard = np.flatnonzero(hard_of >= 0)
    x[hard] = near(hard, hard_of[hard], np.full(hard.size, 0.97, np.float32))
    return x, origin


def _quality(origin: np.ndarray, decisions: list) -> dict:
    """Planted-pair recall and false merges from the decisions."""
    n = origin.size
    kept_of = np.arange(n)
    false = 0
    for d in decisions:
        r, k = int(d.key), int(d.duplicate_of)
        kept_of[r] = k
        false += origin[r] != origin[k]
    copies = np.flatnonzero(origin != np.arange(n))
    # A planted pair (original, copy) is found when both end with the same kept clip.
    found = kept_of[copies] == kept_of[origin[copies]]
    return {"planted_pairs": int(copies.size), "recall": float(found.mean()) if copies.size else 1.0,
            "false_merges": int(false), "dropped": len(decisions)}


def child(level: str, n: int, dim: int) -> dict:
    """One (level, n) measurement. The level runs first, so the peak RSS is the level's own (plus
    its input); the baselines run after it."""
    from reelflow.curation.dedup import DedupConfig, ExactConfig, NearConfig, SemanticConfig, run_dedup
    from reelflow.curation.dedup.near import agreement, candidate_pairs

    keys = np.arange(n).astype(str)
    rng = np.random.default_rng(1)
    quality, duration = rng.random(n), rng.uniform(4, 16, n)
    off = dict(exact=ExactConfig(enabled=False))
    out: dict = {"level": level, "n": n}
    if level == "near":
        ph, origin = make_phashes(n)
        out["input_mb"] = ph.nbytes / 2**20
        cfg = DedupConfig(**off, semantic=SemanticConfig(enabled=False))
        t0, c0 = time.perf_counter(), time.process_time()
        dec = run_dedup(keys, quality, duration, None, ph, None, cfg)
        out["time_s"], out["cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        stats: dict = {}
        candidate_pairs(ph, cfg.near, stats)  # again, untimed: how much work the index did
        out["work"] = f"{stats['frame_pairs_checked'] / n:.2f} frame pairs checked / clip"
        t0 = time.perf_counter()
        np.sort(ph.reshape(-1))
        out["baseline_s"] = time.perf_counter() - t0
        out["baseline"] = "np.sort of the n*8 frame hashes"
        # All-pairs: agreement of every pair on a subset of m clips, extrapolated by n^2 / m^2.
        m = 3000
        sub = ph[:m]
        t0 = time.perf_counter()
        for a in range(m - 1):
            agreement(np.broadcast_to(sub[a], (m - a - 1, F)), sub[a + 1 :], 10, 1)
        out["allpairs_s"] = (time.perf_counter() - t0) * (n * (n - 1)) / (m * (m - 1))
    else:
        x, origin = make_embeddings(n, dim)
        out["input_mb"] = x.nbytes / 2**20
        cfg = DedupConfig(**off, near=NearConfig(enabled=False))
        t0, c0 = time.perf_counter(), time.process_time()
        dec = run_dedup(keys, quality, duration, None, None, x, cfg)
        out["time_s"], out["cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        k = round(math.sqrt(n))
        out["work"] = f"k = {k} partitions, 2 per clip"
        t0 = time.perf_counter()
        for r0 in range(0, n, 65536):  # blocked: the full n x k product would not fit comfortably
            x[r0 : r0 + 65536] @ x[:k].T
        out["baseline_s"] = time.perf_counter() - t0
        out["baseline"] = "one n x sqrt(n) x dim matmul (a single k-means assignment pass)"
        m = 20000
        t0 = time.perf_counter()
        for r0 in range(0, m, 2048):
            x[r0 : r0 + 2048] @ x[:m].T
        out["allpairs_s"] = (time.perf_counter() - t0) * (n / m) ** 2
    out.update(_quality(origin, dec))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--levels", nargs="+", default=["near", "semantic"], choices=["near", "semantic"])
    ap.add_argument("--child", nargs=2, metavar=("LEVEL", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.dim)))
        return
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "DO_NOT_TRACK": "1"}
    print(f"dedup scale benchmark: {os.cpu_count()} CPUs, dim {args.dim}, each (level, n) in a fresh process")
    for level in args.levels:
        rows = []
        for n in args.sizes:
            res = subprocess.run([sys.executable, __file__, "--child", level, str(n), "--dim", str(args.dim)],
                                 env=env, check=True, capture_output=True, text=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(f"\n[{level}]  base = {rows[0]['baseline']}; all-pairs = every pair compared, timed on a "
              f"subset and extrapolated to n; work: {', '.join(r['work'] for r in rows)}")
        print(f"{'n':>10} {'time s':>8} {'cpu s':>7} {'us/clip':>8} {'x base':>7} {'all-pairs s':>12} {'speed-up':>9} "
              f"{'peak MB':>8} {'input MB':>8} {'recall':>7} {'false':>6} {'dropped':>8} {'slope':>6}")
        for i, r in enumerate(rows):
            slope = ""
            if i:
                p = rows[i - 1]
                slope = f"{math.log(r['time_s'] / p['time_s']) / math.log(r['n'] / p['n']):.2f}"
            print(f"{r['n']:>10,} {r['time_s']:>8.2f} {r['cpu_s']:>7.1f} {r['time_s'] / r['n'] * 1e6:>8.1f} "
                  f"{r['time_s'] / r['baseline_s']:>7.1f} {r['allpairs_s']:>12.3g} "
                  f"{r['allpairs_s'] / r['time_s']:>9.3g} "
                  f"{r['peak_rss_mb']:>8.0f} {r['input_mb']:>8.0f} {r['recall']:>7.4f} {r['false_merges']:>6} "
                  f"{r['dropped']:>8} {slope:>6}")
        print("slope: log-log slope of wall time against the previous size (1.0 = linear, 2.0 = all-pairs; "
              "semantic is ~1.5 by design: k = sqrt(n)); cpu s: CPU time of all the process's threads")

if __name__ == "__main__":
    main()
