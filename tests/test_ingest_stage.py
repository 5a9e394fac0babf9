"""Ingest of a large manifest by the workers (``curation.ingest_stage``) gives the in-driver
ingest's rows: every rule that compares rows (repeated uris, conflicting licence claims) and every
per-row one (empty, relative and non-file uris, licences), in CSV, JSONL and Parquet manifests."""

from __future__ import annotations

import csv
import io
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
    small = demo_policy()
    small = small.model_copy(update={"limits": small.limits.model_copy(update={"max_manifest_bytes": 100})})
    with pytest.raises(SourceError, match="over limits.max_manifest_bytes=100"):
        ingest_stage.run_distributed(store.storage, str(manifest), "r1", small, store)
    bad = tmp_path / "bad.csv"
    bad.write_text("path,licence\nx.mp4,CC0-1.0\n")
    with pytest.raises(SourceError, match="lacks required column"):
        ingest_stage.run_distributed(store.storage, str(bad), "r1", demo_policy(), store)


def _source_tree(root) -> None:
    """A folder of inputs with every way a file can get (or lose) its licence: sidecars
    (``<file>.json`` and ``<stem>.json``, a title-only one, broken ones), a root manifest listing
    files by path and by bare name (a name found in several folders), conflicting claims, hidden
    files, a stray non-video, and folders nested two deep, some empty."""
    licences = ["CC0-1.0", "CC-BY-4.0", "CC-BY-NC-4.0", None]
    manifest = ["uri,license,title"]
    for d in range(9):
        folder = root / (f"set{d}" if d else ".")
        for sub in ([""] if d % 3 else ["", "deep/er"]):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            for i in range(6):
                f = folder / sub / f"clip{i}.v{d}.mp4"
                f.write_bytes(b"\0")
                rel = f.relative_to(root).as_posix()
                lic = licences[(d + i) % 4]
                if i == 0 and lic:
                    (folder / sub / f"clip{i}.v{d}.mp4.json").write_text(json.dumps({"license": lic, "title": f"t{d}"}))
                elif i == 1 and lic:
                    manifest.append(f"{rel},{lic},listed {rel}")
                elif i == 2:
                    (folder / sub / f"clip{i}.v{d}.json").write_text(json.dumps({"title": "title only"}))
                    manifest.append(f"{rel},{lic or ''},")
                elif i == 3:  # a sidecar and the manifest disagree: the file is rejected
                    (folder / sub / f"clip{i}.v{d}.mp4.json").write_text(json.dumps({"license": "CC-BY-NC-4.0"}))
                    manifest.append(f"{rel},CC0-1.0,")
                elif i == 4:
                    (folder / sub / f"clip{i}.v{d}.mp4.json").write_text("{not json" if d % 2 else "[1, 2]")
        (folder / ".DS_Store").write_bytes(b"\0")
        (folder / "shared.mp4").write_bytes(b"\0")  # one name in every folder, listed once by name
    (root / "empty" / "nested").mkdir(parents=True)
    (root / "notes.txt").write_text("not a video: an input that fails at probe")
    (root / "set1" / "orphan.json").write_text("{}")  # no file of its name: an input, not a sidecar
    manifest.append("shared.mp4,CC-BY-4.0,the shared name")
    for d in ("set1", "set2"):  # listed by path in set1 only: set2's file of that name has no licence
        (root / d / "pathonly.mp4").write_bytes(b"\0")
    manifest.append("set1/pathonly.mp4,CC0-1.0,listed by path")
    (root / "manifest.csv").write_text("\n".join(manifest) + "\n")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_listing_on_the_workers_matches_the_driver(tmp_path, ray_session, request, where, monkeypatch):
    """A directory or prefix listed and judged by the workers gives the in-driver rows."""
    from reelflow.curation import ingest_stage, sources
    from reelflow.curation.policy import demo_policy
    from reelflow.curation.stage_store import StageStore
    from reelflow.curation.storage import Storage

    monkeypatch.setattr(ingest_stage, "BATCH_ROWS", 4)  # the top level's files in several chunks
    monkeypatch.setattr(ingest_stage, "LIST_DIRS_PER_TASK", 3)  # several listing tasks
    tree = tmp_path / "tree"
    _source_tree(tree)
    source, out = str(tree), str(tmp_path / "out")
    if where == "s3":
        import boto3

        url = request.getfixturevalue("s3_server")
        bucket = f"ingest-{tmp_path.name.lower().replace('_', '-')}"[:60]
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        client.create_bucket(Bucket=bucket)
        for f in sorted(p for p in tree.rglob("*") if p.is_file()):
            client.upload_file(str(f), bucket, f"in/{f.relative_to(tree).as_posix()}")
        source, out = f"s3://{bucket}/in", f"s3://{bucket}/out"
    policy = demo_policy()
    storage = Storage()
    driver = to_table(sources.ingest_rows(storage, source, "r1", policy), STAGE_SCHEMAS["ingest"]).to_pylist()
    store = StageStore(storage, out)
    counts = ingest_stage.run_distributed_listing(storage, source, "r1", policy, store, partitions=3)
    workers = store.read("ingest").to_pylist()
    key = lambda r: r["item_id"]  # noqa: E731
    assert sorted(workers, key=key) == sorted(driver, key=key)
    assert sum(counts.values()) == len(driver) == 9 * 7 + 3 * 6 + 2 + 2  # clips, shared.mp4, deep/er, notes, orphan, pathonly
    pathonly = {r["source_uri"].rsplit("/", 2)[1]: r for r in driver if r["source_uri"].endswith("/pathonly.mp4")}
    assert pathonly["set1"]["status"] == "ok" and pathonly["set2"]["status"] == "rejected"
    reasons = " ".join(r["reason"] or "" for r in driver)
    assert "conflicting claims" in reasons and "not valid JSON" in reasons and "must hold a JSON object" in reasons
    titled = {r["title"] for r in driver}
    assert {"the shared name", "title only", "t2"} <= titled and any(t and t.startswith("listed ") for t in titled)
    assert counts["ok"] > 20 and ingest_stage.finished(store) and len(store.parts("ingest")) == 3


@pytest.mark.parametrize("bare_rows_broadcast", [True, False])
def test_a_name_repeated_in_every_folder_spreads_over_the_partitions(tmp_path, ray_session, monkeypatch,
                                                                    bare_rows_broadcast):
    """``<id>/video.mp4`` in 40 folders (a sidecar in some, a manifest row by path for others, one
    row by bare name for every folder): the same rows as the in-driver ingest, and, while the rows by
    bare name are few enough to send to every partition, no partition judges all the files. (By
    name alone, as beyond ``BROADCAST_BARE_ROWS`` bare-name rows, they all meet in one.)"""
    from reelflow.curation import ingest_stage, sources
    from reelflow.curation.policy import demo_policy
    from reelflow.curation.stage_store import StageStore
    from reelflow.curation.storage import Storage

    monkeypatch.setattr(ingest_stage, "LIST_DIRS_PER_TASK", 2)
    if not bare_rows_broadcast:
        monkeypatch.setattr(ingest_stage, "BROADCAST_BARE_ROWS", 0)
    tree = tmp_path / "tree"
    manifest = ["uri,license,title"]
    for i in range(40):
        folder = tree / f"id{i:03d}"
        folder.mkdir(parents=True)
        (folder / "video.mp4").write_bytes(b"\0")
        if i % 4 == 0:
            (folder / "video.json").write_text(json.dumps({"license": "CC0-1.0", "title": f"sidecar {i}"}))
        elif i % 4 == 1:
            manifest.append(f"id{i:03d}/video.mp4,CC-BY-4.0,row {i}")
        elif i % 4 == 2:  # a path row and a sidecar that disagree: rejected
            manifest.append(f"id{i:03d}/video.mp4,CC-BY-4.0,row {i}")
            (folder / "video.mp4.json").write_text(json.dumps({"license": "CC-BY-NC-4.0"}))
    manifest.append("video.mp4,CC-BY-SA-4.0,the bare name")  # speaks for the i % 4 == 3 folders
    (tree / "manifest.csv").write_text("\n".join(manifest) + "\n")
    policy, storage = demo_policy(), Storage()
    driver = to_table(sources.ingest_rows(storage, str(tree), "r1", policy), STAGE_SCHEMAS["ingest"]).to_pylist()
    store = StageStore(storage, str(tmp_path / "out"))
    ingest_stage.run_distributed_listing(storage, str(tree), "r1", policy, store, partitions=4)
    key = lambda r: r["item_id"]  # noqa: E731
    assert sorted(store.read("ingest").to_pylist(), key=key) == sorted(driver, key=key)
    assert len(driver) == 40
    got = {r["source_uri"].rsplit("/", 2)[1]: r for r in driver}
    assert (got["id003"]["status"], got["id003"]["title"]) == ("ok", "the bare name")
    assert (got["id001"]["status"], got["id001"]["title"]) == ("ok", "row 1")  # its own row over the bare one
    for folder in ("id000", "id002"):  # a sidecar against the bare-name row, against its own row
        assert got[folder]["status"] == "rejected" and "conflicting claims" in got[folder]["reason"], got[folder]
    per_part = [storage.read_bytes(u) for u in store.parts("ingest")]
    sizes = sorted(pq.read_table(io.BytesIO(b)).num_rows for b in per_part)
    assert sum(sizes) == 40
    if bare_rows_broadcast:
        assert sizes[-1] < 20, sizes  # spread: 4 partitions by folder and name
    else:
        assert sizes[-1] == 40, sizes  # by name alone: one partition


def test_a_large_directory_is_listed_by_the_workers_in_a_run(tmp_path, ray_session):
    """Past ``runtime.driver_max_rows`` files the ingest stage hands the listing to the workers; at
    or under it the driver lists the source (and stops listing one file past the limit)."""
    from reelflow.curation import ingest_stage
    from reelflow.curation.pipeline import run_stage
    from reelflow.curation.policy import demo_policy
    from reelflow.curation.stage_store import StageStore
    from reelflow.curation.stage_unit import StageContext
    from reelflow.curation.storage import Storage

    tree = tmp_path / "tree"
    _source_tree(tree)
    files = Storage().list(str(tree))
    assert ingest_stage.listed_within(Storage(), str(tree), len(files)) == files
    assert ingest_stage.listed_within(Storage(), str(tree), len(files) - 1) is None
    for limit, by_workers in ((len(files), False), (10, True)):
        policy = demo_policy()
        policy = policy.model_copy(update={"runtime": policy.runtime.model_copy(update={"driver_max_rows": limit})})
        out = str(tmp_path / f"out{limit}")
        store = StageStore(Storage(), out)
        ctx = StageContext(run_id="r1", output=out, policy=policy, source=str(tree), cache_dir=str(tmp_path / "cache"))
        run = run_stage("ingest", ctx, store)
        assert ("judged by the workers" in run.note) == by_workers, run.note
        assert store.read("ingest").num_rows == 9 * 7 + 3 * 6 + 2 + 2
