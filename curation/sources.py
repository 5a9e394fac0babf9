"""Source discovery: a directory, an ``s3://`` prefix or a manifest file -> one row per input.

Manifest columns: ``uri`` and ``license`` (required), ``title``, ``description``, ``source_id``.
Relative URIs in a manifest are resolved against the manifest's own location.

A directory or prefix takes each video's license from, in order: a sidecar ``<file>.json`` (or
``<stem>.json``) next to it, or a ``manifest.{csv,jsonl,parquet}`` at the root of the source.
Every other file under the source is an input, so a stray non-video ends in the ledger as
``failed`` with a reason instead of being skipped silently.
"""

from __future__ import annotations

import io
import json
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from curation.records import OK, REJECTED, VIDEO, video_id
from curation.storage import Storage, basename, is_s3, join

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".parquet")
MANIFEST_NAMES = tuple(f"manifest{s}" for s in MANIFEST_SUFFIXES)
OPTIONAL_COLUMNS = ("title", "description", "source_id")


class SourceError(ValueError):
    """The source cannot be used at all (CLI exit code 2): missing, empty or a malformed manifest."""


def is_manifest(uri: str) -> bool:
    return str(uri).lower().endswith(MANIFEST_SUFFIXES)


def read_manifest(storage: Storage, uri: str) -> list[dict]:
    """Rows of a manifest as dicts with ``uri`` resolved and optional columns present."""
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError as e:
        raise SourceError(f"manifest not found: {uri}") from e
    except Exception as e:  # botocore errors for a missing key or bucket
        raise SourceError(f"cannot read manifest {uri}: {e}") from e
    table = _parse_manifest(data, uri)
    missing = [c for c in ("uri", "license") if c not in table.column_names]
    if missing:
        raise SourceError(
            f"manifest {uri} lacks required column(s) {missing}; it has {table.column_names}"
        )
    base = _parent(uri)
    rows = []
    for i, r in enumerate(table.to_pylist()):
        raw = r.get("uri")
        raw = str(raw).strip() if raw is not None else ""
        rows.append(
            {
                "uri": _resolve(base, raw) if raw else "",
                "license": _clean(r.get("license")),
                **{c: _clean(r.get(c)) for c in OPTIONAL_COLUMNS},
                "manifest_row": i + 1,
            }
        )
    return rows


def _parse_manifest(data: bytes, uri: str) -> pa.Table:
    low = uri.lower()
    try:
        if low.endswith(".csv"):
            # Every column as text: licence ids such as "1.0" must not become numbers.
            opts = pacsv.ConvertOptions(strings_can_be_null=True, column_types=None)
            t = pacsv.read_csv(io.BytesIO(data), convert_options=opts)
            return t.cast(pa.schema([pa.field(n, pa.string()) for n in t.column_names]))
        if low.endswith(".jsonl"):
            return pajson.read_json(io.BytesIO(data))
        return pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as e:
        raise SourceError(f"manifest {uri} cannot be parsed: {e}") from e


def _clean(v) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def _parent(uri: str) -> str:
    if is_s3(uri):
        return uri.rsplit("/", 1)[0]
    return str(PurePosixPath(uri).parent) if "/" in uri else "."


def _resolve(base: str, uri: str) -> str:
    if is_s3(uri) or uri.startswith("/") or "://" in uri:
        return uri
    return join(base, uri)


def _is_sidecar(uri: str, all_uris: set[str]) -> bool:
    if not uri.endswith(".json"):
        return False
    stem = uri[: -len(".json")]
    return stem in all_uris or any(u.startswith(stem + ".") and u != uri for u in all_uris)


def discover(storage: Storage, source: str) -> list[dict]:
    """The input rows of a source, before any media is touched.

    Returns dicts with ``uri, license, title, description, source_id`` and, for manifest rows,
    ``manifest_row``. Raises SourceError when the source does not exist or holds nothing.
    """
    source = str(source)
    if is_manifest(source) and not _is_dir(source):
        rows = read_manifest(storage, source)
        if not rows:
            raise SourceError(f"manifest {source} has no rows")
        return rows
    files = storage.list(source)
    if not files:
        if not is_s3(source) and not storage.exists(source):
            raise SourceError(f"source does not exist: {source}")
        raise SourceError(f"source holds no files: {source}")
    names = set(files)
    root_manifest = next((join(source, n) for n in MANIFEST_NAMES if join(source, n) in names), None)
    by_uri: dict[str, dict] = {}
    if root_manifest:
        for r in read_manifest(storage, root_manifest):
            by_uri[r["uri"]] = r
            by_uri.setdefault(basename(r["uri"]), r)
    rows = []
    for uri in files:
        name = basename(uri)
        if uri == root_manifest or name.startswith(".") or _is_sidecar(uri, names):
            continue
        meta = _sidecar(storage, uri, names) or by_uri.get(uri) or by_uri.get(name) or {}
        rows.append(
            {
                "uri": uri,
                "license": _clean(meta.get("license")),
                **{c: _clean(meta.get(c)) for c in OPTIONAL_COLUMNS},
            }
        )
    if not rows:
        raise SourceError(f"source holds no input files (only manifests or sidecars): {source}")
    return rows


def _is_dir(uri: str) -> bool:
    return not is_s3(uri) and Path(uri).is_dir()


def _sidecar(storage: Storage, uri: str, names: set[str]) -> dict | None:
    stem = uri.rsplit(".", 1)[0] if "." in basename(uri) else uri
    for cand in (uri + ".json", stem + ".json"):
        if cand in names and cand != uri:
            try:
                meta = json.loads(storage.read_bytes(cand))
            except (json.JSONDecodeError, UnicodeDecodeError):
                return {"license": None, "_sidecar_error": f"sidecar {basename(cand)} is not valid JSON"}
            return meta if isinstance(meta, dict) else None
    return None


def ingest_rows(storage: Storage, source: str, run_id: str, policy) -> list[dict]:
    """Discovery + the license rule: one ledger-ready row per input.

    Licence is checked here, before any download or decode: media we may not use is never read.
    """
    from curation.filters import check_license

    out: list[dict] = []
    seen: dict[str, int] = {}
    for i, r in enumerate(discover(storage, source)):
        uri = r["uri"]
        # Empty or repeated URIs still get their own ledger row, under an id made unique by position.
        item = video_id(uri) if uri and uri not in seen else video_id(f"{uri}#input{i}")
        status, reason = OK, None
        if not uri:
            status, reason = REJECTED, f"manifest row {r.get('manifest_row')}: empty uri"
        elif uri in seen:
            status, reason = REJECTED, f"duplicate uri: already listed as input #{seen[uri] + 1}"
        else:
            seen[uri] = i
            reason = check_license(r.get("license"), policy)
            if reason:
                status = REJECTED
        out.append(
            {
                "run_id": run_id, "item_id": item, "kind": VIDEO, "parent_id": None,
                "source_uri": uri, "stage": "ingest", "status": status, "reason": reason,
                "license": r.get("license"), "title": r.get("title"),
                "description": r.get("description"), "source_id": r.get("source_id") or item,
            }
        )
    return out
