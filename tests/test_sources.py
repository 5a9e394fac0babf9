import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reelflow.curation.policy import Policy
from reelflow.curation.records import OK, REJECTED
from reelflow.curation.sources import SourceError, discover, ingest_rows
from reelflow.curation.storage import Storage


@pytest.fixture
def storage():
    return Storage()


def test_manifest_formats_resolve_relative_uris(tmp_path, storage):
    rows = [{"uri": "a.mp4", "license": "CC0-1.0", "title": "A"}, {"uri": "/abs/b.mp4", "license": "CC-BY-4.0"}]
    (tmp_path / "m.csv").write_text("uri,license,title\na.mp4,CC0-1.0,A\n/abs/b.mp4,CC-BY-4.0,\n")
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    for name in ("m.csv", "m.jsonl", "m.parquet"):
        got = discover(storage, str(tmp_path / name))
        assert [g["uri"] for g in got] == [str(tmp_path / "a.mp4"), "/abs/b.mp4"], name
        assert got[0]["title"] == "A" and got[1]["title"] is None


def test_manifest_without_license_column_is_a_usage_error(tmp_path, storage):
    (tmp_path / "m.csv").write_text("uri,title\na.mp4,A\n")
    with pytest.raises(SourceError, match=r"lacks required column\(s\) \['license'\]"):
        discover(storage, str(tmp_path / "m.csv"))


def test_missing_and_empty_sources(tmp_path, storage):
    with pytest.raises(SourceError, match="does not exist"):
        discover(storage, str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="does not exist|holds no files"):
        discover(storage, str(tmp_path / "empty"))


def test_directory_uses_sidecars_and_root_manifest(tmp_path, storage):
    for n in ("a.mp4", "b.mp4", "c.mov", "readme.txt"):
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "a.mp4.json").write_text(json.dumps({"license": "CC0-1.0", "title": "from sidecar"}))
    (tmp_path / "manifest.csv").write_text("uri,license\nb.mp4,CC-BY-4.0\n")
    (tmp_path / ".hidden").write_bytes(b"x")
    got = {r["uri"].rsplit("/", 1)[1]: r for r in discover(storage, str(tmp_path))}
    assert set(got) == {"a.mp4", "b.mp4", "c.mov", "readme.txt"}  # sidecar, manifest, hidden are not inputs
    assert got["a.mp4"]["license"] == "CC0-1.0" and got["a.mp4"]["title"] == "from sidecar"
    assert got["b.mp4"]["license"] == "CC-BY-4.0"
    assert got["c.mov"]["license"] is None


def test_a_root_manifest_row_by_path_licenses_its_own_file_only(tmp_path, storage):
    """``set1/video.mp4`` in the root manifest speaks for that file; an unlisted ``set2/video.mp4``
    must not borrow its licence (it did). A row by bare name (``shared.mp4``) still speaks for
    every file of that name, in any folder."""
    for d in ("set1", "set2"):
        (tmp_path / d).mkdir()
        for n in ("video.mp4", "shared.mp4"):
            (tmp_path / d / n).write_bytes(b"x")
    (tmp_path / "manifest.csv").write_text("uri,license\nset1/video.mp4,CC-BY-4.0\nshared.mp4,CC0-1.0\n")
    got = {r["uri"].split(str(tmp_path) + "/", 1)[1]: r["license"] for r in discover(storage, str(tmp_path))}
    assert got == {"set1/video.mp4": "CC-BY-4.0", "set2/video.mp4": None,
                   "set1/shared.mp4": "CC0-1.0", "set2/shared.mp4": "CC0-1.0"}
    rows = {r["source_uri"].split(str(tmp_path) + "/", 1)[1]: r for r in ingest_rows(storage, str(tmp_path), "r1", Policy())}
    assert rows["set2/video.mp4"]["status"] == REJECTED and "licen" in rows["set2/video.mp4"]["reason"]
    assert rows["set1/video.mp4"]["status"] == OK


def test_ingest_rows_reject_unlicensed_duplicates_and_empty_uris(tmp_path, storage):
    (tmp_path / "m.csv").write_text(
        "uri,license\n/v/a.mp4,CC0-1.0\n/v/a.mp4,CC0-1.0\n/v/b.mp4,CC-BY-NC-4.0\n,CC0-1.0\n/v/c.mp4,\n"
    )
    rows = ingest_rows(storage, str(tmp_path / "m.csv"), "run1", Policy())
    assert [r["status"] for r in rows] == [OK, REJECTED, REJECTED, REJECTED, REJECTED]
    assert rows[1]["reason"].startswith("duplicate uri")
    assert "not in allowlist" in rows[2]["reason"]
    assert "empty uri" in rows[3]["reason"]
    assert "none declared" in rows[4]["reason"]
    assert len({r["item_id"] for r in rows}) == len(rows)  # every input its own ledger id
