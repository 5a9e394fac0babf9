"""Ingest of a large manifest by the workers (``curation.ingest_stage``) gives the in-driver
ingest's rows: every rule that compares rows (repeated uris, conflicting licence claims) and every
per-row one (empty, relative and non-file uris, licences), in CSV, JSONL and Parquet manifests."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reelflow.curation.records import STAGE_SCHEMAS, to_table


def _manifest_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        uri = f"videos/v{i:04d}.mp4" if i % 3 else f"/data/raw/v{i:04d}.mp4"  # relative and absolute
        rows.append({"uri": uri, "license": ["CC0-1.0", "CC-BY-4.0", "cc-by-4.0 ", "CC-BY-NC-4.0"][i % 4],
                     "title": f"  clip {i} ", "description": "" if i % 5 else "a description"})
    rows[10] = {**rows[10], "uri": ""}  # an empty uri
    rows[11] = {**rows[11], "uri": "https://example.com/x.mp4"}  # a scheme that is never read
    rows[12] = {**rows[12], "license": ""}  # no licence
    for i in range(20, 200, 9):  # repeated rows of a uri, some later in the file
        rows.append(dict(rows[i]))
    for i in range(25, 200, 17):  # the same uri under another licence: every row of it is rejected
        rows.append({**rows[i], "license": "CC-BY-NC-4.0" if rows[i]["license"] != "CC-BY-NC-4.0" else "CC0-1.0"})
    rows.insert(5, dict(rows[40]))  # a repeat listed before the first "original"
    return rows


def _write(path, rows: list[dict]) -> None:
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=50)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_ingest_on_the_workers_matches_the_driver(tmp_path, ray_session, fmt, monkeypatch):
    from reelflow.curation import ingest_stage, sources
    from reelflow.curation.policy import demo_policy
    from reelflow.curation.stage_store import StageStore
    from reelflow.curation.storage import Storage

    monkeypatch.setattr(ingest_stage, "BATCH_ROWS", 64)  # several map tasks, and batches cut mid-file
    manifest = tmp_path / f"manifest.{fmt}"
    _write(manifest, _manifest_rows(300))
    policy = demo_policy()
    storage = Storage()
    driver = to_table(sources.ingest_rows(storage, str(manifest), "r1", policy), STAGE_SCHEMAS["ingest"]).to_pylist()
    store = StageStore(storage, str(tmp_path / "out"))
    counts = ingest_stage.run_distributed(storage, str(manifest), "r1", policy, store, partitions=3)
    workers = store.read("ingest").to_pylist()
    key = lambda r: r["item_id"]  # noqa: E731
    assert sorted(workers, key=key) == sorted(driver, key=key)
    assert sum(counts.values()) == len(driver) == 300 + 20 + 11 + 1
    reasons = " ".join(r["reason"] or "" for r in driver)
    assert "conflicting claims" in reasons and "duplicate uri" in reasons and "empty uri" in reasons
    assert counts["ok"] > 100 and ingest_stage.finished(store)
    assert len(store.parts("ingest")) == 3


def test_a_crashed_distributed_ingest_is_not_taken_for_a_finished_one(tmp_path, ray_session):
    from reelflow.curation import ingest_stage
    from reelflow.curation.policy import demo_policy
    from reelflow.curation.sources import SourceError
    from reelflow.curation.stage_store import StageStore
    from reelflow.curation.storage import Storage

    manifest = tmp_path / "manifest.csv"
    _write(manifest, _manifest_rows(300))
    store = StageStore(Storage(), str(tmp_path / "out"))
    ingest_stage.run_distributed(store.storage, str(manifest), "r1", demo_policy(), store, partitions=2)
    assert ingest_stage.finished(store)
    store.storage.delete(store.parts("ingest")[0])  # a reduce that never wrote: no marker matches
    assert not ingest_stage.finished(store)
    empty = tmp_path / "empty.csv"
    empty.write_text("uri,license\n")
    with pytest.raises(SourceError, match="has no rows"):
        ingest_stage.run_distributed(store.storage, str(empty), "r1", demo_policy(), store)
    bad = tmp_path / "bad.csv"
    bad.write_text("path,licence\nx.mp4,CC0-1.0\n")
    with pytest.raises(SourceError, match="lacks required column"):
        ingest_stage.run_distributed(store.storage, str(bad), "r1", demo_policy(), store)
