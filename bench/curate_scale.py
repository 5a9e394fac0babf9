"""The curation table machinery at growing row counts, media work replaced by a cheap per-row
function: it measures the engine (reading, resuming, writing stage tables; gates; ledger), not
ffmpeg. Per step it reports wall seconds and the driver's peak RSS above its RSS after start-up,
and, per N, the ratio to the smallest N measured in the same run (``#14``'s targets: driver RSS
flat in N, wall-time log-log slope <= 1.1).

    .venv/bin/python bench/curate_scale.py [--videos 50000 500000] [--clips-per-video 2] [--keep DIR]
                                           [--source rows|files] [--until STEP]

Steps, in the pipeline's shape:
- ingest: synthetic input rows made and written by the workers (as a manifest read as a dataset);
  with ``--source files``, the real ingest stage over a folder of N empty files (1000 a sub-folder,
  made before the timer starts) whose root ``manifest.csv`` gives each its licence: listed and
  judged by the workers past ``runtime.driver_max_rows`` files (``curation.ingest_stage``);
- probe, filter, shots (1:1 per video), clips (1:N), score, extract, caption (1:1 per clip):
  ``pipeline.run_media_stage`` with stand-in stages whose ``process`` only adds columns (score adds
  dedup's inputs - a content signature, 8 frame hashes and a 32-d embedding - with 15% planted
  exact, near and semantic copies; caption adds an 8-d pseudo-random embedding from the key);
- dedup: the real dedup stage (exact, near and semantic levels as shuffles over Ray tasks), and its
  gate (``duplicate_of`` joined against the inputs);
- rerun: every per-item stage again over its finished table (resume's anti-join; nothing to do);
- gate(caption): the per-item stage gate as the flow runs it (``table_gates``);
- balance: the real balance stage (k-means fitted on a sample, assignment and writes as maps), and
  its gate (the weights' mean as a sum of per-part sums);
- shard: the real shard stage (a plan cut by one task over sorted blocks, then one writer per shard; every clip's mp4 is the
  same 1 KiB file), and its gate;
- outputs: the ledger (a shuffle by video over Ray tasks, one writer per partition), the index and
  dataset.json, as the flow writes them beyond ``runtime.driver_max_rows`` (parts only: the
  single-file export is off here).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

for k, v in {"RAY_USAGE_STATS_ENABLED": "0", "GX_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}.items():
    os.environ.setdefault(k, v)
import checkout  # noqa: E402,F401  (reelflow from this checkout when it is not installed)
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import ray  # noqa: E402
import ray.cloudpickle  # noqa: E402

from reelflow.curation import gates, pipeline, ray_tables, run_outputs, table_gates  # noqa: E402
from reelflow.curation.policy import policy_from_dict  # noqa: E402
from reelflow.curation.records import CLIP, OK, STAGE_SCHEMAS, VIDEO, clip_key, video_id  # noqa: E402
from reelflow.curation.stage_store import StageStore  # noqa: E402
from reelflow.curation.stages import ItemStage, StageContext  # noqa: E402
from reelflow.curation.storage import Storage  # noqa: E402
from reelflow.curation.table_stages import BalanceStage, DedupStage  # noqa: E402

FILES_PER_FOLDER = 1000  # --source files

# Workers cannot import this script by name: ship its stage classes by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class _Cheap(ItemStage):
    rows_per_task = 2048  # the media stages take 1 a task; here the per-row work is microseconds
    cpus = 1.0

    def process(self, row: dict) -> list[dict]:
        return [{**row, **self.adds(row), "status": OK, "reason": None}]

    def adds(self, row: dict) -> dict:
        return {}


class Probe(_Cheap):
    name, input_stage = "probe", "ingest"

    def adds(self, row):
        return {"src_width": 640, "src_height": 360, "src_fps": 24.0, "src_duration_s": 10.0, "rotation": 0,
                "size_bytes": 1_000_000}


class Filter(_Cheap):
    name, input_stage = "filter", "probe"


class Shots(_Cheap):
    name, input_stage = "shots", "filter"

    def adds(self, row):
        return {"shot_starts": [0.0], "shot_ends": [10.0], "shot_detector": "bench"}


class Clips(_Cheap):
    name, input_stage, input_id_column = "clips", "shots", "parent_id"
    per_video = 2

    def process(self, row):
        return [{**row, "kind": CLIP, "item_id": clip_key(row["item_id"], 0, i), "parent_id": row["item_id"],
                 "start_s": 4.0 * i, "end_s": 4.0 * i + 4.0, "duration_s": 4.0, "status": OK, "reason": None}
                for i in range(self.per_video)]


def _frames(key: str) -> np.ndarray:
    return np.frombuffer(hashlib.sha512(key.encode()).digest(), np.uint64).copy()


def _embedding(key: str) -> np.ndarray:
    return np.random.default_rng(zlib.crc32(key.encode())).standard_normal(EMB_DIMS).astype(np.float32)


_FILE = re.compile(r"/d\d{5}/v(\d{8})\.mp4$")


def _file_name(i: int) -> str:
    """Stand-in video ``i``'s path inside the source folder (``--source files``)."""
    return f"d{i // FILES_PER_FOLDER:05d}/v{i:08d}.mp4"


EMB_DIMS = 32  # a stand-in for CLIP's 512: the semantic level's cost is per clip, k-means on a sample


class Score(_Cheap):
    """Dedup's inputs with planted copies of the video before: of every 20 videos, the 2nd's clips
    are exact copies, the 4th's near copies (two bits off per frame hash), the 6th's semantic
    copies (embedding noise 1e-3): 15% duplicates, each of an original no other level touches."""

    name, input_stage = "score", "clips"

    def adds(self, row):
        clip = round(row["start_s"] / 4.0)
        if m := _FILE.search(row["source_uri"]):  # --source files: the video's number is in its name
            v, folder = int(m.group(1)), row["source_uri"][: m.start()]
            key = lambda back: clip_key(video_id(f"{folder}/{_file_name(v - back)}"), 0, clip)  # noqa: E731
        else:
            v = int(row["parent_id"][1:], 16)
            key = lambda back: clip_key(f"v{v - back:016x}", 0, clip)  # noqa: E731
        sig, frames, emb = row["item_id"], _frames(row["item_id"]), _embedding(row["item_id"])
        if v % 20 == 1:
            sig, frames, emb = key(1), _frames(key(1)), _embedding(key(1))
        elif v % 20 == 3:
            frames = _frames(key(1)) ^ np.uint64(0b101)
        elif v % 20 == 5:
            emb = _embedding(key(1)) + np.float32(1e-3)
        return {"motion_mean": 1.5, "static": 0.1, "cuts_per_s": 0.0, "border_fraction": 0.0, "sharpness": 100.0,
                "mean_luma": 0.4, "text_conf_max": 0.0, "aesthetic_score": float(clip + v % 7),
                "content_signature": hashlib.sha1(sig.encode()).hexdigest(), "phashes": frames.tolist(),
                "clip_embedding": emb.tolist()}


class Extract(_Cheap):
    name, input_stage = "extract", "dedup"
    clip_uri = "/bench/clip.mp4"  # one small file every clip points at (the shard stage reads it)

    def adds(self, row):
        return {"width": 640, "height": 360, "fps": 24.0, "frames": 96, "clip_uri": self.clip_uri,
                "clip_bytes": 1024}


class Caption(_Cheap):
    name, input_stage = "caption", "extract"

    def adds(self, row):
        # 8 pseudo-random dimensions from the key: something for the balance stage's k-means to cluster
        emb = (np.frombuffer(hashlib.sha256(row["item_id"].encode()).digest()[:8], np.uint8) / 255.0 - 0.5).tolist()
        return {"caption": f"FPS-24 a synthetic clip {row['item_id']}", "caption_embedding": emb}


STAGES = [Probe, Filter, Shots, Clips, Score, Extract, Caption]  # dedup runs between score and extract


def _ingest_rows(batch: pa.Table, run_id: str) -> pa.Table:
    ids = [f"v{i:016x}" for i in batch["id"].to_pylist()]
    rows = [{"run_id": run_id, "item_id": v, "kind": VIDEO, "source_uri": f"s3://bench/{v}.mp4", "stage": "ingest",
             "status": OK, "license": "CC0-1.0"} for v in ids]
    return pa.Table.from_pylist([{c: r.get(c) for c in STAGE_SCHEMAS["ingest"].names} for r in rows],
                                schema=STAGE_SCHEMAS["ingest"])


class PeakRSS:
    """The process's peak resident memory while a step runs, sampled every 20 ms."""

    def __init__(self) -> None:
        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def source_folder(root: Path, n_videos: int) -> Path:
    """N empty stand-in videos, 1000 a folder, and a root manifest with each one's licence (made
    once per N and kept with ``--keep``)."""
    src = root / f"src{n_videos}"
    done = src / ".complete"
    if done.exists():
        return src
    shutil.rmtree(src, ignore_errors=True)
    lines = ["uri,license"]
    for i in range(n_videos):
        rel = _file_name(i)
        if i % FILES_PER_FOLDER == 0:
            (src / rel).parent.mkdir(parents=True)
        (src / rel).touch()
        lines.append(f"{rel},CC0-1.0")
    (src / "manifest.csv").write_text("\n".join(lines) + "\n")
    done.touch()  # hidden: not an input
    return src


def run_one(n_videos: int, per_video: int, root: Path, source: str = "rows", until: str | None = None) -> list[dict]:
    out = root / f"n{n_videos}"
    shutil.rmtree(out, ignore_errors=True)
    policy = policy_from_dict({"runtime": {"part_rows": 4096}})
    src = source_folder(root, n_videos) if source == "files" else None
    ctx = StageContext(run_id="bench", output=str(out), policy=policy, source=str(src) if src else None)
    store = StageStore(Storage(), str(out))
    Clips.per_video = per_video
    out.mkdir(parents=True, exist_ok=True)
    (out / "clip.mp4").write_bytes(b"\0" * 1024)
    Extract.clip_uri = str(out / "clip.mp4")
    base = PeakRSS.now()
    steps: list[dict] = []

    def step(name: str, fn) -> None:
        t0 = time.perf_counter()
        with PeakRSS() as rss:
            fn()
        steps.append({"step": name, "seconds": time.perf_counter() - t0, "rss_mib": (rss.peak - base) / 2**20})
        print(f"  {name:<14} {steps[-1]['seconds']:8.1f} s  driver +{steps[-1]['rss_mib']:7.1f} MiB", flush=True)

    def ingest() -> None:
        if src is not None:
            run = pipeline.run_stage("ingest", ctx, store)
            print(f"  ingest: {run.inputs} inputs from {src} ({run.note})", flush=True)
            return
        ds = ray.data.range(n_videos, override_num_blocks=max(2, math.ceil(n_videos / 4096)))
        ds = ds.map_batches(_ingest_rows, fn_kwargs={"run_id": "bench"}, batch_format="pyarrow", batch_size=4096)
        ray_tables.write_parts(ds, store, "ingest", "item_id", policy.runtime.part_rows)

    step("ingest", ingest)
    step("gate(ingest)", lambda: table_gates.check_stage_table("ingest", store, None, "item_id", policy))
    if until == "ingest":
        return steps
    for cls in STAGES:
        step(cls.name, lambda cls=cls: pipeline.run_media_stage(cls(ctx), store))
        if until == cls.name:
            return steps
        if cls is Score:
            step("dedup", lambda: pipeline.run_table_stage(DedupStage.for_policy(policy), store))
            step("gate(dedup)", lambda: table_gates.check_stage_table("dedup", store, "score", "item_id", policy))
            print(f"  dedup dropped (planted: 5% of clips at each level): {_dedup_levels(store)}", flush=True)
    step("rerun (finished)", lambda: [pipeline.run_media_stage(cls(ctx), store) for cls in STAGES])

    def half_done() -> None:
        # A crash midway through caption: half its parts gone, no finished marker. The resume
        # anti-joins the extract table against the caption table's answered ids.
        store.storage.delete(str(out / "_stages" / "caption" / "_FINISHED.json"))
        for uri in store.parts("caption")[::2]:
            store.storage.delete(uri)

    half_done()
    step("resume(caption)", lambda: pipeline.run_media_stage(Caption(ctx), store))
    step("gate(caption)", lambda: _gate(store, policy))
    step("balance", lambda: pipeline.run_table_stage(BalanceStage.for_policy(policy), store))
    step("gate(balance)", lambda: table_gates.check_stage_table("balance", store, "caption", "item_id", policy))
    step("shard", lambda: pipeline.run_shard_stage(ctx, store))
    step("gate(shard)", lambda: table_gates.check_stage_table("shard", store, "balance", "item_id", policy))
    step("outputs", lambda: run_outputs.write_outputs(store, "bench", "{}", in_driver=False,
                                                 part_rows=policy.runtime.part_rows, single_file_max_rows=0))
    shutil.rmtree(out, ignore_errors=True)
    return steps


def _count_levels(batch: pa.Table) -> pa.Table:
    return batch.group_by("dedup_level").aggregate([("dedup_level", "count")])


def _dedup_levels(store: StageStore) -> dict[str, int]:
    """Clips each dedup level dropped, counted by the workers."""
    ds = ray_tables.read_table(store, "dedup", columns=["dedup_level"]).map_batches(_count_levels,
                                                                                  batch_format="pyarrow")
    got: dict[str, int] = {}
    for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for level, n in zip(b["dedup_level"].to_pylist(), b["dedup_level_count"].to_pylist()):
            if level is not None:
                got[level] = got.get(level, 0) + n
    return dict(sorted(got.items()))


def _gate(store: StageStore, policy) -> None:
    table_gates.check_stage_table("caption", store, "extract", "item_id", policy)


def one(n: int, per_video: int, root: Path, source: str, until: str | None) -> None:
    """One N in this (fresh) process: its peak RSS says nothing of the other Ns."""
    pipeline.ensure_ray(None)
    gates.warm_up()
    ray.data.range(10).materialize()  # Ray Data's first-job set-up, not a step's
    print(f"driver RSS after start-up (Ray, pipeline, GX imported): {PeakRSS.now() / 2**20:.0f} MiB", flush=True)
    print(f"{n} videos -> {n * per_video} candidate clips", flush=True)
    print("RESULT " + json.dumps(run_one(n, per_video, root, source, until)), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, nargs="+", default=[50_000, 500_000])
    ap.add_argument("--clips-per-video", type=int, default=2)
    ap.add_argument("--keep", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--source", choices=["rows", "files"], default="rows",
                    help="ingest synthetic rows, or list a folder of N empty files (see the doc)")
    ap.add_argument("--until", choices=["ingest", *[c.name for c in STAGES]], default=None,
                    help="stop after this step (ingest: and its gate)")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    root = Path(a.keep or tempfile.mkdtemp(prefix="reelflow-scale-"))
    if a.one is not None:
        return one(a.one, a.clips_per_video, root, a.source, a.until)
    results = {}
    for n in sorted(a.videos):
        proc = subprocess.run([sys.executable, __file__, "--one", str(n), "--clips-per-video", str(a.clips_per_video),
                               "--keep", str(root), "--source", a.source,
                               *(["--until", a.until] if a.until else [])], stdout=subprocess.PIPE, text=True, check=True)
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                results[n] = json.loads(line[len("RESULT "):])
            else:
                print(line)
    small = min(results)
    size = (lambda n: f"{n:,} inputs") if a.until == "ingest" else (lambda n: f"{n * a.clips_per_video:,} clips")
    print("\n| step | " + " | ".join(f"{size(n)}: s / driver MiB" for n in sorted(results))
          + " | wall slope (log-log) | driver MiB growth |")
    print("|---|" + "---:|" * (len(results) + 2))
    for i, s in enumerate(results[small]):
        cells = [f"{results[n][i]['seconds']:.1f} / +{results[n][i]['rss_mib']:.0f}" for n in sorted(results)]
        big = max(results)
        slope = (math.log(max(results[big][i]["seconds"], 1e-3) / max(s["seconds"], 1e-3)) / math.log(big / small)
                 if big != small else float("nan"))
        growth = results[big][i]["rss_mib"] - s["rss_mib"]
        print(f"| {s['step']} | " + " | ".join(cells) + f" | {slope:.2f} | {growth:+.0f} |")


if __name__ == "__main__":
    main()
