"""Ingest of a folder-per-video source on the workers: ``<id>/video.mp4`` in N folders.

A common layout for downloaded datasets: every video in its own folder, all with the same file
name, and a root ``manifest.csv`` that lists each by path (``<id>/video.mp4,CC0-1.0``). It is
hard on a listing ingest in two ways: the top level holds N folders (each one a unit of listing
work), and every file has the same name (the key that brings a file, its sidecars and its manifest
rows together). This bench lists and judges such a tree with ``ingest_stage.run_distributed_listing``
and reports, in one process per run:

- the wall seconds and the driver's RSS growth (above its RSS after Ray started);
- how many listing tasks ran;
- the rows of the largest partition against the mean (1.0: even; P: one partition took all).

    .venv/bin/python bench/ingest_layout.py [--folders 1000000] [--rows-per-partition 100000] [--keep DIR]

To compare two commits, run it with each tree on ``PYTHONPATH`` (``git worktree``); the source
tree is made once and kept under ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def source_tree(root: Path, n: int) -> Path:
    """N folders, each with an empty ``video.mp4``, and a root manifest listing each by path."""
    src = root / f"layout{n}"
    done = src / ".complete"
    if done.exists():
        return src
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    with open(src / "manifest.csv", "w") as m:
        m.write("uri,license\n")
        for i in range(n):
            folder = src / f"id{i:08d}"
            folder.mkdir()
            (folder / "video.mp4").touch()
            m.write(f"id{i:08d}/video.mp4,CC0-1.0\n")
    done.touch()  # hidden: not an input
    return src


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run(src: Path, rows_per_partition: int) -> dict:
    import pyarrow.parquet as pq
    import ray

    from reelflow.curation import ingest_stage
    from reelflow.curation.pipeline import ensure_ray
    from reelflow.curation.policy import demo_policy
    from reelflow.curation.stage_store import StageStore
    from reelflow.curation.storage import Storage

    ensure_ray()
    ingest_stage.ROWS_PER_PARTITION = rows_per_partition
    tasks = 0
    listing = ingest_stage._list_task

    class Counted:  # counts the listing tasks launched, whatever the commit's way of launching them
        def remote(self, *a, **k):
            nonlocal tasks
            tasks += 1
            return listing.remote(*a, **k)

    ingest_stage._list_task = Counted()
    out = tempfile.mkdtemp(prefix="ingest-layout-")
    storage, base = Storage(), _rss_mib()
    peak = base
    store = StageStore(storage, out)
    t0 = time.perf_counter()
    counts = ingest_stage.run_distributed_listing(storage, str(src), "bench", demo_policy(), store)
    wall = time.perf_counter() - t0
    peak = max(peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    sizes = [pq.ParquetFile(storage.localize(u)).metadata.num_rows for u in store.parts("ingest")]
    # The partitions the stage made (an empty one may write no part), by its own rule: from the
    # files listed, the inputs and the tree's two others (manifest.csv, .complete).
    n = max(1, min(ingest_stage.MAX_PARTITIONS, -(-(sum(sizes) + 2) // rows_per_partition)))
    ray.shutdown()
    shutil.rmtree(out, ignore_errors=True)
    return {"inputs": sum(counts.values()), "ok": counts.get("ok", 0), "wall_s": round(wall, 1),
            "driver_growth_mib": round(peak - base, 1), "listing_tasks": tasks, "partitions": n,
            "largest_over_mean": round(max(sizes) / (sum(sizes) / n), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folders", type=int, default=1_000_000)
    ap.add_argument("--rows-per-partition", type=int, default=100_000,
                    help="inputs a reduce task judges (the stage's default is 500,000)")
    ap.add_argument("--keep", type=Path, default=None, help="where the source tree is made and kept")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    root = a.keep or Path(tempfile.mkdtemp(prefix="ingest-layout-src-"))
    src = source_tree(root, a.folders)
    if a.one:
        print("RESULT " + json.dumps(run(src, a.rows_per_partition)), flush=True)
        return
    # A fresh process: the driver's RSS is measured from its own start, nothing left from making the tree.
    proc = subprocess.run([sys.executable, __file__, "--one", "--folders", str(a.folders), "--keep", str(root),
                           "--rows-per-partition", str(a.rows_per_partition)],
                          capture_output=True, text=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        sys.exit(f"run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    r = json.loads(line[len("RESULT "):])
    print(f"{a.folders:,} folders of video.mp4: {r['inputs']:,} inputs ({r['ok']:,} ok) in {r['wall_s']} s; "
          f"{r['listing_tasks']:,} listing tasks; {r['partitions']} partitions, the largest "
          f"{r['largest_over_mean']}x the mean; driver +{r['driver_growth_mib']} MiB")
    if a.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
