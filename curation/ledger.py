"""The ledger, the index and dataset.json: what happened to every input, and what was kept.

The ledger has one row per input video and per candidate clip, each with exactly one terminal
status: the stage where the item stopped (a non-ok status) or, for kept items, ``accepted``.

Built where the tables lie (ARCHITECTURE decision 2). An item's outcome needs only its own rows,
and a video's outcome only its clips' rows, so the work splits by video: every stage table's rows
are hashed on their video (``item_id`` for a video, ``parent_id`` for a clip) into P partitions by
map tasks, and one reduce task per partition computes its ledger rows — the same function
(``ledger_rows``) small runs call in the driver — writes them as ``ledger/part-<p>.parquet`` and
returns counts. The index is a map only: each task turns a group of shard-table parts into an
index part. The funnel, the rule funnel and dataset.json are sums of what the tasks return.
This module holds the logic; ``run_outputs`` runs it (in the driver or as Ray tasks) and writes.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reelflow.curation import records
from reelflow.curation.records import (
    ACCEPTED,
    CLIP,
    FAILED,
    INDEX_COLUMNS,
    INDEX_SCHEMA,
    LEDGER_SCHEMA,
    OK,
    REJECTED,
    VIDEO,
)
from reelflow.curation.stage_store import StageStore, _superseded_dropped

VIDEO_STAGES = list(records.VIDEO_STAGES)
CLIP_STAGES = list(records.CLIP_STAGES)
FUNNEL_STAGES = VIDEO_STAGES + CLIP_STAGES
# What the ledger needs of a stage row (each stage table has the ones its schema has).
LEDGER_INPUT_COLUMNS = ["run_id", "item_id", "parent_id", "source_uri", "stage", "status", "reason",
                        "duplicate_of", "retryable"]
# Stage rows a reduce task holds at once (as Python dicts, ~1 KiB each): P = estimated rows / this.
ROWS_PER_PARTITION = 250_000
MAX_PARTITIONS = 4096
# Shard-table parts one index task turns into one index part.
INDEX_PARTS_PER_TASK = 8
# Whose reasons the rule funnel counts: the first quality rule each rejected clip broke.
RULE_STAGE = "score"


# -- one group of videos: the ledger rows ----------------------------------------------------------
def _last_status(tables: dict[str, list[dict]], stages: list[str]) -> dict[str, dict]:
    """item_id -> the row of the last stage that saw it (later stages overwrite earlier ones)."""
    last: dict[str, dict] = {}
    for st in stages:
        for r in tables.get(st, ()):
            last[r["item_id"]] = r
    return last


def ledger_rows(tables: dict[str, list[dict]]) -> list[dict]:
    """The ledger rows of the videos (and their clips) that ``tables`` holds every stage row of,
    sorted videos first, then by id."""
    videos = _last_status(tables, VIDEO_STAGES)
    clips = _last_status(tables, CLIP_STAGES)
    clips_by_video: dict[str, list[dict]] = defaultdict(list)
    rows: list[dict] = []
    for cid, r in clips.items():
        status = ACCEPTED if (r["stage"] == "shard" and r["status"] == OK) else r["status"]
        if status == OK:  # stopped between stages: the run did not finish this clip
            status, reason = FAILED, f"unfinished: passed {r['stage']} but no later stage recorded it"
            r = {**r, "retryable": True}  # a resume finishes it
        else:
            reason = r["reason"]
        row = _ledger_row(r, CLIP, status, reason)
        rows.append(row)
        clips_by_video[r["parent_id"]].append(row)
    for vid, r in videos.items():
        if r["status"] != OK:
            rows.append(_ledger_row(r, VIDEO, r["status"], r["reason"]))
            continue
        if r["stage"] != "shots":
            rows.append(_ledger_row({**r, "retryable": True}, VIDEO, FAILED,
                                    f"unfinished: passed {r['stage']} but no later stage recorded it"))
            continue
        rows.append(_video_outcome(r, clips_by_video.get(vid, [])))
    rows.sort(key=lambda x: (x["kind"] != VIDEO, x["item_id"]))
    return rows


def _ledger_row(r: dict, kind: str, status: str, reason: str | None) -> dict:
    return {
        "run_id": r["run_id"], "item_id": r["item_id"], "kind": kind, "parent_id": r.get("parent_id"),
        "source_uri": r["source_uri"], "stage": r["stage"], "status": status, "reason": reason,
        "duplicate_of": r.get("duplicate_of") if status == REJECTED else None,
        "retryable": bool(r.get("retryable")) if status == FAILED else None,
    }


def _video_outcome(r: dict, clips: list[dict]) -> dict:
    counts = Counter(c["status"] for c in clips)
    if counts[ACCEPTED]:
        return _ledger_row({**r, "stage": "shard"}, VIDEO, ACCEPTED, f"{counts[ACCEPTED]} clip(s) accepted")
    if not clips:
        return _ledger_row(r, VIDEO, FAILED, "no candidate clip was planned")
    reasons = Counter((c["reason"] or "").split(":")[0] for c in clips)
    summary = ", ".join(f"{n}x {why}" for why, n in reasons.most_common())
    status = FAILED if counts[FAILED] == len(clips) else REJECTED
    retryable = any(c["retryable"] for c in clips if c["status"] == FAILED)
    return _ledger_row({**r, "stage": "clips", "retryable": retryable}, VIDEO, status, f"no clip accepted ({summary})")


# -- what the tasks return -------------------------------------------------------------------------
@dataclass
class Tally:
    """Counts a ledger or index task returns; the driver adds them up (small whatever N is)."""

    ledger_rows: int = 0
    by_kind_status: Counter = field(default_factory=Counter)  # (kind, status) -> rows
    stage_status: dict[str, Counter] = field(default_factory=dict)  # the funnel: stage -> status -> rows
    rule_rejects: Counter = field(default_factory=Counter)  # rule -> clips it removed
    index_rows: int = 0
    buckets: dict[str, list] = field(default_factory=dict)  # bucket -> [clips, seconds, {shards}]
    shards: set = field(default_factory=set)

    def add(self, other: "Tally") -> "Tally":
        self.ledger_rows += other.ledger_rows
        self.by_kind_status.update(other.by_kind_status)
        for st, c in other.stage_status.items():
            self.stage_status.setdefault(st, Counter()).update(c)
        self.rule_rejects.update(other.rule_rejects)
        self.index_rows += other.index_rows
        for b, (n, s, shards) in other.buckets.items():
            mine = self.buckets.setdefault(b, [0, 0.0, set()])
            mine[0] += n
            mine[1] += s
            mine[2] |= shards
        self.shards |= other.shards
        return self


# -- map: stage rows to partitions by video --------------------------------------------------------
def _columns(stage: str) -> list[str]:
    names = records.STAGE_SCHEMAS[stage].names
    return [c for c in LEDGER_INPUT_COLUMNS if c in names]


def _video_key(stage: str, t: pa.Table) -> list:
    return t["item_id" if stage in VIDEO_STAGES else "parent_id"].to_pylist()


def partition_of(keys: list, n: int) -> np.ndarray:
    """The partition of each video id: crc32, stable across processes (Python's hash() is not)."""
    if n == 1:
        return np.zeros(len(keys), dtype=np.int64)
    return np.fromiter((zlib.crc32((k or "").encode()) % n for k in keys), dtype=np.int64, count=len(keys))


def map_stage_parts(store: StageStore, stage: str, uris: list[str], n: int) -> list[pa.Table]:
    """Rows of ``uris`` (parts of ``stage``), their ledger columns plus ``stage_pos``, split into
    ``n`` tables by video."""
    cols = _columns(stage)
    parts = [store.read_part(stage, u, cols) for u in uris]
    t = pa.concat_tables(parts) if parts else records.STAGE_SCHEMAS[stage].empty_table().select(cols)
    t = t.append_column("stage_pos", pa.array(np.full(t.num_rows, FUNNEL_STAGES.index(stage), np.int16)))
    if n == 1:
        return [t]
    p = partition_of(_video_key(stage, t), n)
    order = np.argsort(p, kind="stable")
    bounds = np.searchsorted(p[order], np.arange(n + 1))
    t = t.take(pa.array(order))
    return [t.slice(bounds[i], bounds[i + 1] - bounds[i]) for i in range(n)]


# -- reduce: one partition's ledger rows -----------------------------------------------------------
def reduce_partition(tables: list[pa.Table]) -> tuple[list[dict], Tally]:
    """The ledger rows of one partition (all stage rows of its videos) and its counts."""
    tables = [t for t in tables if t.num_rows]
    tally = Tally()
    by_stage: dict[str, list[dict]] = {}
    if tables:
        t = pa.concat_tables(tables, promote_options="permissive")
        pos = t["stage_pos"].to_numpy()
        for i, stage in enumerate(FUNNEL_STAGES):
            rows = t.filter(pa.array(pos == i))
            if not rows.num_rows:
                continue
            # As StageStore.read does over a whole table: an item's rows all fall in one partition.
            rows = _superseded_dropped(rows.drop_columns(["stage_pos"]))
            by_stage[stage] = rows.to_pylist()
    for stage, rows in by_stage.items():
        tally.stage_status[stage] = Counter(r["status"] for r in rows)
        if stage == RULE_STAGE:
            tally.rule_rejects.update((r["reason"] or "").split(":", 1)[0] for r in rows if r["status"] == REJECTED)
    out = ledger_rows(by_stage)
    tally.ledger_rows = len(out)
    tally.by_kind_status = Counter((r["kind"], r["status"]) for r in out)
    return out, tally


# -- the index ---------------------------------------------------------------------------------------
def index_table(store: StageStore, uris: list[str]) -> tuple[pa.Table, Tally]:
    """Index rows of the shard-table parts ``uris``: accepted clips, sorted by (shard, key)."""
    cols = [c for c in INDEX_COLUMNS if c != "key"] + ["item_id", "status"]
    parts = [store.read_part("shard", u, cols) for u in uris]
    tally = Tally()
    if not parts:
        return INDEX_SCHEMA.empty_table(), tally
    t = pa.concat_tables(parts)
    t = t.filter(pc.equal(t["status"], OK))
    t = t.sort_by([("shard", "ascending"), ("item_id", "ascending")])
    cols_out = {c: t["item_id"] if c == "key" else t[c] for c in INDEX_COLUMNS}
    cols_out["sampling_weight"] = pc.fill_null(cols_out["sampling_weight"], 1.0)
    out = pa.table(cols_out).cast(INDEX_SCHEMA)
    tally.index_rows = out.num_rows
    for b, d, s in zip(out["bucket"].to_pylist(), out["duration_s"].to_pylist(), out["shard"].to_pylist()):
        mine = tally.buckets.setdefault(b, [0, 0.0, set()])
        mine[0] += 1
        mine[1] += d or 0.0
        mine[2].add(s)
        tally.shards.add(s)
    return out, tally


# -- the driver's view -------------------------------------------------------------------------------
def funnel_rows(tally: Tally) -> list[dict]:
    """Per stage: rows in, passed on, rejected, failed (the table artifact and CLI summary)."""
    out = []
    for st in FUNNEL_STAGES:
        c = tally.stage_status.get(st, Counter())
        out.append({"stage": st, "rows": sum(c.values()), "passed": c[OK], "rejected": c[REJECTED],
                    "failed": c[FAILED]})
    return out


def dataset_summary(tally: Tally, run_id: str, policy_json: str) -> dict:
    by = tally.by_kind_status
    seconds = sum(s for _, s, _ in tally.buckets.values())
    return {
        "run_id": run_id,
        "inputs": sum(n for (k, _), n in by.items() if k == VIDEO),
        "videos": {s: by[(VIDEO, s)] for s in (ACCEPTED, REJECTED, FAILED)},
        "clips": {s: by[(CLIP, s)] for s in (ACCEPTED, REJECTED, FAILED)},
        "hours": round(seconds / 3600, 6),
        "seconds": round(seconds, 3),
        "shards": sorted(tally.shards),
        "buckets": {
            k: {"clips": n, "seconds": round(s, 3), "shards": len(shards)}
            for k, (n, s, shards) in sorted(tally.buckets.items())
        },
        "policy_sha1": _sha1(policy_json),
    }


def _sha1(s: str) -> str:
    return hashlib.sha1(s.encode()).hexdigest()


def build_ledger(store: StageStore) -> pa.Table:
    """The whole ledger in this process, without writing it (the report's fallback, tools, tests)."""
    tables = [t for st in FUNNEL_STAGES for t in map_stage_parts(store, st, store.parts(st), 1)]
    return pa.Table.from_pylist(reduce_partition(tables)[0], schema=LEDGER_SCHEMA)

