"""Curation cost split into a run's fixed cost and its marginal cost per video, each against its
floor, measured in the same run (issue #13, item 7).

Marginal: ``curate`` on N videos and, into a fresh OUTPUT, on 2N (the same N plus N more); the
difference is what the extra N videos cost. Its floor is what any pipeline producing these clips
must at least do for them: one plain ffmpeg decode of each extra input plus one x264 encode of the
seconds kept from them, at the output settings, as ``--workers`` parallel single-threaded ffmpegs.
Fixed: the N-video run less the marginal cost of N videos (2 t_N - t_2N). Each run is a fresh
``reelflow curate`` process, so that includes the engines' start-up (Ray, Prefect's temporary
server, the gates' GX context), first imports and model loads.

Two input sets, distinct footage per video (every shot its own seeded generator: looping the same
few sources would make dedup reject most clips, correctly):

* ``distinct``: moving footage; most candidates pass the quality rules and are encoded.
* ``retention``: Movie Gen-like: four shots in five are static (the ``static`` rule rejects them),
  so most candidates are judged and never encoded.

    .venv/bin/python bench/curate_throughput.py [--videos 2] [--seconds 30] [--repeats 3] [--sets distinct retention]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

for k, v in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "RAY_USAGE_STATS_ENABLED": "0", "DO_NOT_TRACK": "1",
             "GX_ANALYTICS_ENABLED": "false", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}.items():
    os.environ.setdefault(k, v)

import checkout  # noqa: E402,F401  (reelflow from this checkout when it is not installed)

from reelflow.curation.policy import Policy  # noqa: E402
from reelflow.curation.samples import make_cut_video  # noqa: E402

SHOT_LENGTHS = [2.0, 5.0, 7.5, 9.0, 12.0, 14.0]  # s; 2 s shots are shorter than the 4 s minimum clip


def moving_source(seed: int) -> str:
    """A lavfi generator with its own content for ``seed``, moving enough for the motion rule."""
    rng = random.Random(seed)
    kind = seed % 3
    if kind == 0:
        return f"sierpinski=seed={seed}:jump={rng.randint(5, 20)}"
    if kind == 1:
        return f"cellauto=seed={seed}:rule={rng.choice([30, 90, 110, 150])}:scroll=1"
    x, y = rng.uniform(-1.5, 0.3), rng.uniform(-0.8, 0.8)
    return f"mandelbrot=start_x={x:.6f}:start_y={y:.6f}:start_scale={rng.uniform(0.5, 3):.3f}"


def static_source(seed: int) -> str:
    """A still picture of its own (gradients that barely drift): the ``static`` rule rejects it."""
    return f"gradients=seed={seed}:speed=0.0001:n={3 + seed % 5}"


def make_inputs(folder: Path, n: int, seconds: float, size: tuple[int, int], which: str, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    paths = []
    for i in range(n):
        shots, left = [], seconds
        while left > 0:
            d = min(left, rng.choice(SHOT_LENGTHS))
            shots.append(d)
            left -= d
        base = 1000 * (i + 1) + 100 * seed
        srcs = [static_source(base + j) if which == "retention" and j % 5 != 2 else moving_source(base + j)
                for j in range(len(shots))]
        paths.append(make_cut_video(folder / f"{which}{i}.mp4", shots, size=size, fps=24, sources=srcs).path)
    return paths


def write_manifest(path: Path, videos: list[Path]) -> Path:
    path.write_text("uri,license,title\n" + "".join(f"{v},CC0-1.0,bench video {v.stem}\n" for v in videos))
    return path


def _ffmpeg(args: list[str]) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def floor_seconds(inputs: list[Path], kept: list[dict], policy: Policy, workers: int, tmp: Path) -> tuple[float, float]:
    """(decode ``inputs``, encode the ``kept`` clips): the same parallelism as the Ray run."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(lambda p: _ffmpeg(["-threads", "1", "-i", str(p), "-f", "null", "-"]), inputs))
    decode = time.perf_counter() - t0
    o = policy.output

    def encode(r: dict) -> None:
        _ffmpeg(["-ss", f"{r['start_s']}", "-t", f"{r['duration_s']}", "-i", r["source_uri"], "-an",
                 "-vf", f"fps={o.fps:g},scale={r['width']}:{r['height']}", "-c:v", "libx264", "-preset", o.x264_preset,
                 "-crf", str(o.crf), "-threads", "1", str(tmp / f"{r['key']}.mp4")])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(encode, kept))
    return decode, time.perf_counter() - t0


def curate(manifest: Path, output: Path) -> tuple[float, dict]:
    """One ``reelflow curate`` in a fresh process, as a user runs it: every run pays the same
    start-up (engines, first imports, model loads), so the N / 2N difference holds none of it. (In
    one long-lived process the first run alone paid the warm-up, and the marginal came out low.)"""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "reelflow.flows.cli", "curate", str(manifest), str(output)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                          env={**os.environ, "COLUMNS": "200"})
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"curate failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed, {"funnel": _printed_funnel(proc.stdout)}


def _printed_funnel(stdout: str) -> list[dict]:
    """The per-stage seconds from the funnel table ``reelflow curate`` prints."""
    from reelflow.curation.records import STAGE_ORDER

    rows = []
    column = None
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.replace("\u2502", "|").replace("\u2503", "|").split("|") if c.strip()]
        if "seconds" in cells and cells[0] == "stage":  # the header: stage, rows, ..., seconds, nodes
            column = cells.index("seconds")
        elif column is not None and len(cells) > column and cells[0] in STAGE_ORDER:
            rows.append({"stage": cells[0], "seconds": float(cells[column])})
    if not rows:
        raise RuntimeError(f"no funnel table in the output of reelflow curate:\n{stdout[-2000:]}")
    return rows


def bench_set(which: str, args, tmp: Path) -> dict:
    import pyarrow.parquet as pq

    from reelflow.curation.stage_store import StageStore
    from reelflow.curation.storage import Storage

    d = tmp / which
    (d / "src").mkdir(parents=True)
    print(f"[{which}] generating {2 * args.videos} x {args.seconds:g} s videos at {args.width}x{args.height} ...", flush=True)
    videos = make_inputs(d / "src", 2 * args.videos, args.seconds, (args.width, args.height), which)
    first, extra = videos[: args.videos], videos[args.videos :]
    # Runs alternate N, 2N, N, 2N, ...; the medians go into the difference. One pair is not
    # enough on a shared host: measured 2026-12-06, the same pair's marginal came out 29.6 s and
    # 15.0 s on two runs of the same code.
    n_manifest, n2_manifest = write_manifest(d / "n.csv", first), write_manifest(d / "2n.csv", videos)
    t_ns, t_2ns = [], []
    for r in range(args.repeats):
        t_ns.append(curate(n_manifest, d / f"out_n{r}")[0])
        t, result = curate(n2_manifest, d / f"out_2n{r}")
        t_2ns.append(t)
        if r:
            shutil.rmtree(d / f"out_n{r}")
    t_n, t_2n = statistics.median(t_ns), statistics.median(t_2ns)
    os.replace(d / f"out_2n{args.repeats - 1}", d / "out_2n")
    kept = pq.read_table(d / "out_2n" / "index.parquet").to_pylist()
    extra_uris = {str(v) for v in extra}
    kept_extra = [r for r in kept if r["source_uri"] in extra_uris]
    (d / "floor").mkdir()
    decode_s, encode_s = floor_seconds(extra, kept_extra, Policy(), args.workers, d / "floor")
    store = StageStore(Storage(), str(d / "out_2n"))
    candidates = store.read("clips").num_rows
    score = store.read("score").to_pylist()
    analysed_s = sum(r["end_s"] - r["start_s"] for r in score)
    encoded = store.read("extract").to_pylist()
    encoded_s = sum(r["end_s"] - r["start_s"] for r in encoded)
    marginal, floor = t_2n - t_n, decode_s + encode_s
    fixed_in_run = 2 * t_n - t_2n
    out = dict(set=which, t_n=t_n, t_2n=t_2n, marginal=marginal, decode=decode_s, encode=encode_s, floor=floor,
               fixed=fixed_in_run, candidates=candidates, kept=len(kept),
               kept_s=sum(r["duration_s"] for r in kept), analysed_s=analysed_s, encoded_s=encoded_s,
               encoded=len(encoded), funnel=result["funnel"])
    print(f"[{which}] {len(videos)} videos: {candidates} candidates, {len(encoded)} encoded ({encoded_s:.1f} s of "
          f"{analysed_s:.1f} s analysed), {len(kept)} kept ({out['kept_s']:.1f} s); retention "
          f"{len(kept) / max(candidates, 1):.0%} of candidates", flush=True)
    print(f"[{which}] curate {args.videos} videos {t_n:.1f} s, {2 * args.videos} videos {t_2n:.1f} s (medians of "
          f"{', '.join(f'{t:.1f}' for t in t_ns)} and {', '.join(f'{t:.1f}' for t in t_2ns)})", flush=True)
    print(f"[{which}] stage seconds ({2 * args.videos} videos): "
          + ", ".join(f"{r['stage']} {r['seconds']:.1f}" for r in result["funnel"]), flush=True)
    print(f"[{which}] marginal {args.videos} videos: curate {marginal:.1f} s vs floor {floor:.1f} s "
          f"(decode {decode_s:.1f} + encode kept {encode_s:.1f}) = {marginal / floor:.2f}x", flush=True)
    print(f"[{which}] fixed cost of a run: {out['fixed']:.1f} s (2 x {t_n:.1f} - {t_2n:.1f})", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=2, help="N: curate N videos, then 2N")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                    help="parallel ffmpegs of the floor; keep it at the CPUs the local Ray gets (all of them)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each size; their medians are compared")
    ap.add_argument("--sets", nargs="+", default=["distinct", "retention"], choices=["distinct", "retention"])
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="reelflow-bench-") as d:
        results = [bench_set(which, args, Path(d)) for which in args.sets]

    print()
    print(f"workers: {args.workers} (Ray CPUs and ffmpeg processes alike); N = {args.videos} videos of {args.seconds:g} s "
          f"at {args.width}x{args.height}")
    print("| set | candidates | kept | encoded s / analysed s | curate N / 2N (s) | marginal (s) | marginal floor (s) "
          "| marginal / floor | fixed cost (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['set']} | {r['candidates']} | {r['kept']} | {r['encoded_s']:.1f} / {r['analysed_s']:.1f} "
              f"| {r['t_n']:.1f} / {r['t_2n']:.1f} | {r['marginal']:.1f} | {r['floor']:.1f} "
              f"| **{r['marginal'] / r['floor']:.2f}x** | {r['fixed']:.1f} |")


if __name__ == "__main__":
    main()
