"""The samples the shards hold, read back for the dataset gate: one row per sample, what members
it has and what its json says."""

from __future__ import annotations

import json
import tarfile

import pandas as pd

from reelflow.curation.policy import Policy
from reelflow.curation.storage import Storage, join

# Tars read at a time by ``validate``: reading is I/O (S3 GETs, disk), streamed, so memory stays
# at one member per tar in flight whatever the shard size.
VALIDATE_THREADS = 8


def shard_samples(storage: Storage, output: str, index_keys: dict[str, str], policy: Policy) -> pd.DataFrame:
    """One row per sample found in the tars: which members it has and what its json says. The
    tars are read in parallel (``VALIDATE_THREADS``), each streamed once front to back."""
    from concurrent.futures import ThreadPoolExecutor

    tars = [uri for uri in storage.list(join(output, "shards")) if uri.endswith(".tar")]
    with ThreadPoolExecutor(max_workers=VALIDATE_THREADS) as pool:
        per_tar = list(pool.map(lambda uri: tar_samples(storage, uri, index_keys, policy), tars))
    cols = ["key", "shard", "has_mp4", "has_json", "has_txt", "json_key_matches", "json_license_allowed", "in_index_same_shard"]
    return pd.DataFrame([row for rows in per_tar for row in rows], columns=cols)


def tar_samples(storage: Storage, uri: str, index_keys: dict[str, str], policy: Policy) -> list[dict]:
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
