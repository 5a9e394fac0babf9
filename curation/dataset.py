"""Reading a curated OUTPUT back: its policy, run id, shards' members, and the final dataset gate."""

from __future__ import annotations

import json
import tarfile

import pandas as pd

from curation import gates, output_tables
from curation.policy import Policy, policy_from_dict
from curation.stage_store import StageStore
from curation.storage import Storage, join

RUN_FILE = "run.json"


class OutputError(ValueError):
    """OUTPUT is not a curated dataset, or belongs to a different policy (CLI exit code 2)."""


def write_run_info(store: StageStore, run_id: str, policy: Policy, source: str) -> None:
    info = {"run_id": run_id, "source": source, "policy": policy.model_dump(mode="json")}
    store.storage.write_bytes(join(store.output, "_stages", RUN_FILE), json.dumps(info, indent=2, sort_keys=True).encode())


def read_run_info(storage: Storage, output: str) -> dict | None:
    uri = join(output, "_stages", RUN_FILE)
    if not storage.exists(uri):
        return None
    return json.loads(storage.read_bytes(uri))


# Tars read at a time by ``validate``: reading is I/O (S3 GETs, disk), streamed, so memory stays
# at one member per tar in flight whatever the shard size.
VALIDATE_THREADS = 8


def shard_samples(storage: Storage, output: str, index_keys: dict[str, str], policy: Policy) -> pd.DataFrame:
    """One row per sample found in the tars: which members it has and what its json says. The
    tars are read in parallel (``VALIDATE_THREADS``), each streamed once front to back."""
    from concurrent.futures import ThreadPoolExecutor

    tars = [uri for uri in storage.list(join(output, "shards")) if uri.endswith(".tar")]
    with ThreadPoolExecutor(max_workers=VALIDATE_THREADS) as pool:
        per_tar = list(pool.map(lambda uri: _tar_samples(storage, uri, index_keys, policy), tars))
    cols = ["key", "shard", "has_mp4", "has_json", "has_txt", "json_key_matches", "json_license_allowed", "in_index_same_shard"]
    return pd.DataFrame([row for rows in per_tar for row in rows], columns=cols)


def _tar_samples(storage: Storage, uri: str, index_keys: dict[str, str], policy: Policy) -> list[dict]:
    rel = "shards/" + uri.split("/shards/", 1)[1] if "/shards/" in uri else uri
    members: dict[str, dict] = {}
    with storage.open_stream(uri) as f, tarfile.open(fileobj=f, mode="r|") as tf:
        for m in tf:  # a stream: each member's data is read (json) or skipped (media) in turn
            key, _, ext = m.name.partition(".")
            d = members.setdefault(key, {})
            d[ext] = m.size
            if ext == "json":
                try:
                    d["_rec"] = json.loads(tf.extractfile(m).read())
                except (json.JSONDecodeError, UnicodeDecodeError):
                    d["_rec"] = {}
    rows = []
    for key, d in members.items():
        rec = d.get("_rec") or {}
        rows.append(
            {
                "key": key, "shard": rel, "has_mp4": d.get("mp4", 0) > 0,
                "has_json": "json" in d, "has_txt": "txt" in d,
                "json_key_matches": rec.get("key") == key,
                "json_license_allowed": policy.allows_license(rec.get("license")),
                "in_index_same_shard": index_keys.get(key) == rel,
            }
        )
    return rows


def validate_output(output: str, storage: Storage | None = None) -> dict:
    """Run the final dataset suite on OUTPUT; raises GateFailed (exit 3) or OutputError (exit 2)."""
    storage = storage or Storage()
    info = read_run_info(storage, output)
    missing = [f"{n}.parquet (or {n}/)" for n in output_tables.NAMES if not output_tables.exists(storage, output, n)]
    missing += [n for n in ("dataset.json",) if not storage.exists(join(output, n))]
    if info is None or missing:
        raise OutputError(f"{output} is not a finished reelflow dataset (missing: {missing or ['_stages/run.json']})")
    policy = policy_from_dict(info["policy"], origin=f"{output}/_stages/{RUN_FILE}")
    index = output_tables.read(storage, output, output_tables.INDEX)
    ledger = output_tables.read(storage, output, output_tables.LEDGER)
    index_keys = dict(zip(index.column("key").to_pylist(), index.column("shard").to_pylist())) if index.num_rows else {}
    samples = shard_samples(storage, output, index_keys, policy)
    store = StageStore(storage, output)
    input_ids = set(store.read("ingest").column("item_id").to_pylist())
    gates.check_dataset(index, samples, ledger, input_ids, policy)
    return {"clips": index.num_rows, "samples": len(samples), "shards": samples["shard"].nunique() if len(samples) else 0,
            "ledger_rows": ledger.num_rows}
