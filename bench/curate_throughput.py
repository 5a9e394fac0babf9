"""Curation throughput against the physical floor, measured in the same run.

Floor = one plain ffmpeg decode of every input + one encode of the kept seconds at the output
settings (what any pipeline producing these clips must at least do). We time `curate` (Prefect +
Ray, all stages, gates and shards; engines warmed up first so start-up is not counted) on the
same generated 720p videos with cuts, and print curate / floor.

    .venv/bin/python bench/curate_throughput.py [--videos 4] [--seconds 60] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

for k, v in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "RAY_USAGE_STATS_ENABLED": "0", "DO_NOT_TRACK": "1"}.items():
    os.environ.setdefault(k, v)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.policy import Policy  # noqa: E402
from curation.samples import make_cut_video  # noqa: E402


def make_inputs(folder: Path, n: int, seconds: float, size: tuple[int, int], seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = ["uri,license,title"]
    for i in range(n):
        shots, left = [], seconds
        while left > 0:
            d = min(left, rng.choice([2.0, 5.0, 7.5, 9.0, 12.0, 14.0]))
            shots.append(d)
            left -= d
        gen = make_cut_video(folder / f"v{i}.mp4", shots, size=size, fps=24)
        rows.append(f"{gen.path},CC0-1.0,bench video {i}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def _ffmpeg(args: list[str]) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def floor_seconds(inputs: list[Path], kept: list[dict], policy: Policy, workers: int, tmp: Path) -> tuple[float, float]:
    """(decode all inputs, encode the kept clips): the same parallelism as the Ray run."""
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()

    import pyarrow.parquet as pq
    import ray
    from prefect import flow

    from curation.pipeline import ensure_ray
    from flows import curate_flow

    with tempfile.TemporaryDirectory(prefix="reelflow-bench-") as d:
        tmp = Path(d)
        (tmp / "src").mkdir()
        print(f"generating {args.videos} x {args.seconds:g} s videos at {args.width}x{args.height} ...", flush=True)
        manifest = make_inputs(tmp / "src", args.videos, args.seconds, (args.width, args.height))
        inputs = sorted((tmp / "src").glob("*.mp4"))

        # Warm up the engines (Ray, Ray Data's first execution, Prefect's temporary server) so that
        # one-off start-up is reported apart from curation time.
        t0 = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        ensure_ray()
        ray.data.range(args.workers, override_num_blocks=args.workers).map_batches(lambda b: b).take_all()
        flow(name="warm-up")(lambda: None)()
        warmup_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        result = curate_flow.curate(source=str(manifest), output=str(tmp / "out"))
        curate_s = time.perf_counter() - t0
        kept = pq.read_table(tmp / "out" / "index.parquet").to_pylist()
        (tmp / "floor").mkdir()
        decode_s, encode_s = floor_seconds(inputs, kept, Policy(), args.workers, tmp / "floor")

    floor = decode_s + encode_s
    in_s = args.videos * args.seconds
    kept_s = sum(r["duration_s"] for r in kept)
    print()
    print(f"inputs: {args.videos} videos, {in_s:.0f} s at {args.width}x{args.height}; kept {len(kept)} clips, {kept_s:.1f} s")
    print(f"workers: {args.workers} (Ray CPUs and ffmpeg processes alike)")
    print(f"engine start-up (Ray, Ray Data, Prefect server; not counted below): {warmup_s:.1f} s")
    print("stage seconds: " + ", ".join(f"{r['stage']} {r['seconds']:.1f}" for r in result["funnel"]))
    print(f"floor: decode {decode_s:.1f} s + encode kept {encode_s:.1f} s = {floor:.1f} s")
    print(f"curate: {curate_s:.1f} s  ({in_s / curate_s:.2f} s of input video per second)")
    print(f"ratio curate / floor: {curate_s / floor:.2f}x")


if __name__ == "__main__":
    main()
