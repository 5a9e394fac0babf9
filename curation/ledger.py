"""The ledger, the index and dataset.json: what happened to every input, and what was kept.

The ledger has one row per input video and per candidate clip, each with exactly one terminal
status: the stage where the item stopped (a non-ok status) or, for kept items, ``accepted``.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.parquet as pq

from curation import records
from curation.records import ACCEPTED, CLIP, FAILED, INDEX_COLUMNS, INDEX_SCHEMA, LEDGER_SCHEMA, OK, REJECTED, VIDEO
from curation.stage_store import StageStore
from curation.storage import join

VIDEO_STAGES = list(records.VIDEO_STAGES)
CLIP_STAGES = list(records.CLIP_STAGES)
FUNNEL_STAGES = VIDEO_STAGES + CLIP_STAGES


def _last_status(tables: dict[str, list[dict]], stages: list[str]) -> dict[str, dict]:
    """item_id -> the row of the last stage that saw it (later stages overwrite earlier ones)."""
    last: dict[str, dict] = {}
    for st in stages:
        for r in tables[st]:
            last[r["item_id"]] = r
    return last


def build_ledger(store: StageStore) -> pa.Table:
    tables = {st: store.read(st).to_pylist() for st in FUNNEL_STAGES}
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
    return pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA)


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


def funnel(store: StageStore) -> list[dict]:
    """Per stage: rows in, passed on, rejected, failed (the table artifact and CLI summary)."""
    out = []
    for st in FUNNEL_STAGES:
        t = store.read(st)
        c = Counter(t.column("status").to_pylist()) if t.num_rows else Counter()
        out.append({"stage": st, "rows": t.num_rows, "passed": c[OK], "rejected": c[REJECTED], "failed": c[FAILED]})
    return out


def build_index(store: StageStore) -> pa.Table:
    rows = [r for r in store.read("shard").to_pylist() if r["status"] == OK]
    rows.sort(key=lambda r: (r["shard"], r["item_id"]))
    out = []
    for r in rows:
        rec = {c: r.get(c) for c in INDEX_COLUMNS}
        rec["key"] = r["item_id"]
        rec["sampling_weight"] = 1.0 if rec["sampling_weight"] is None else rec["sampling_weight"]
        out.append(rec)
    return pa.Table.from_pylist(out, schema=INDEX_SCHEMA)


def dataset_summary(index: pa.Table, ledger: pa.Table, run_id: str, policy_json: str) -> dict:
    led = ledger.to_pylist()
    by = Counter((r["kind"], r["status"]) for r in led)
    buckets: dict[str, dict] = {}
    for r in index.to_pylist():
        b = buckets.setdefault(r["bucket"], {"clips": 0, "seconds": 0.0, "shards": set()})
        b["clips"] += 1
        b["seconds"] += r["duration_s"]
        b["shards"].add(r["shard"])
    seconds = sum(b["seconds"] for b in buckets.values())
    return {
        "run_id": run_id,
        "inputs": sum(n for (k, _), n in by.items() if k == VIDEO),
        "videos": {s: by[(VIDEO, s)] for s in (ACCEPTED, REJECTED, FAILED)},
        "clips": {s: by[(CLIP, s)] for s in (ACCEPTED, REJECTED, FAILED)},
        "hours": round(seconds / 3600, 6),
        "seconds": round(seconds, 3),
        "shards": sorted({r["shard"] for r in index.to_pylist()}),
        "buckets": {
            k: {"clips": v["clips"], "seconds": round(v["seconds"], 3), "shards": len(v["shards"])}
            for k, v in sorted(buckets.items())
        },
        "policy_sha1": _sha1(policy_json),
    }


def _sha1(s: str) -> str:
    return hashlib.sha1(s.encode()).hexdigest()


def write_outputs(store: StageStore, run_id: str, policy_json: str) -> dict:
    """Write ledger.parquet, index.parquet and dataset.json at the OUTPUT root; return the summary."""
    ledger = build_ledger(store)
    index = build_index(store)
    summary = dataset_summary(index, ledger, run_id, policy_json)
    for name, table in (("ledger.parquet", ledger), ("index.parquet", index)):
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        store.storage.write_bytes(join(store.output, name), buf.getvalue())
    store.storage.write_bytes(join(store.output, "dataset.json"), json.dumps(summary, indent=2).encode())
    return summary
