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
from collections import Counter
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from reelflow.curation.failures import redact
from reelflow.curation.policy import LimitsPolicy
from reelflow.curation.records import OK, REJECTED, VIDEO, video_id
from reelflow.curation.storage import Storage, basename, is_s3, join

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".parquet")
MANIFEST_NAMES = tuple(f"manifest{s}" for s in MANIFEST_SUFFIXES)
OPTIONAL_COLUMNS = ("title", "description", "source_id")


class SourceError(ValueError):
    """The source cannot be used at all (CLI exit code 2): missing, empty or a malformed manifest."""


def is_manifest(uri: str) -> bool:
    return str(uri).lower().endswith(MANIFEST_SUFFIXES)


def read_manifest(storage: Storage, uri: str, limits: LimitsPolicy | None = None) -> list[dict]:
    """Rows of a manifest as dicts with ``uri`` resolved and optional columns present."""
    limits = limits or LimitsPolicy()
    try:
        size = storage.size(uri)
        if size > limits.max_manifest_bytes:
            raise SourceError(f"manifest {uri} is {size} bytes, over limits.max_manifest_bytes={limits.max_manifest_bytes}")
        data = storage.read_bytes(uri)
    except FileNotFoundError as e:
        raise SourceError(f"manifest not found: {uri}") from e
    except SourceError:
        raise
    except Exception as e:  # botocore errors for a missing key or bucket
        raise SourceError(f"cannot read manifest {uri}: {e}") from e
    table = _parse_manifest(data, uri)
    check_manifest_columns(table.column_names, uri)
    return manifest_rows(table, _parent(uri), first_row=1)


def manifest_rows(table: pa.Table, base: str, first_row: int) -> list[dict]:
    """Manifest rows as input dicts: ``uri`` resolved against ``base`` (the manifest's folder),
    text trimmed, ``manifest_row`` numbered from ``first_row`` (1 for the file's first row)."""
    rows = []
    for i, r in enumerate(table.to_pylist()):
        raw = r.get("uri")
        raw = str(raw).strip() if raw is not None else ""
        rows.append(
            {
                "uri": _resolve(base, raw) if raw else "",
                "license": _clean(r.get("license")),
                **{c: _clean(r.get(c)) for c in OPTIONAL_COLUMNS},
                "manifest_row": first_row + i,
            }
        )
    return rows


def check_manifest_columns(names: list[str], uri: str) -> None:
    missing = [c for c in ("uri", "license") if c not in names]
    if missing:
        raise SourceError(f"manifest {uri} lacks required column(s) {missing}; it has {names}")


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


def manifest_folder(uri: str) -> str:
    """What a manifest's relative uris resolve against."""
    return _parent(uri)


def _parent(uri: str) -> str:
    if is_s3(uri):
        return uri.rsplit("/", 1)[0]
    return str(PurePosixPath(uri).parent) if "/" in uri else "."


def _resolve(base: str, uri: str) -> str:
    if is_s3(uri) or uri.startswith("/") or "://" in uri:
        return uri
    return join(base, uri)


def _dot_prefixes(uris: set[str]) -> Counter:
    """How many files of each folder have each name prefix that ends before a dot (``clip.v2.mp4``:
    ``clip`` and ``clip.v2``), to tell sidecars in one pass instead of a scan per ``.json`` file."""
    out: Counter = Counter()
    for u in uris:
        folder, _, name = u.rpartition("/")
        out.update((folder, name[:i]) for i, ch in enumerate(name) if ch == "." and i)
    return out


def _is_sidecar(uri: str, all_uris: set[str], dot_prefixes: Counter) -> bool:
    """A ``.json`` file is a sidecar when a file of its folder is named by its stem, or starts with
    its stem and a dot (itself aside)."""
    if not uri.endswith(".json"):
        return False
    stem = uri[: -len(".json")]
    folder, _, name = stem.rpartition("/")
    return stem in all_uris or dot_prefixes[(folder, name)] > 1


def discover(storage: Storage, source: str, limits: LimitsPolicy | None = None,
             files: list[str] | None = None) -> list[dict]:
    """The input rows of a source, before any media is touched.

    Returns dicts with ``uri, license, title, description, source_id`` and, for manifest rows,
    ``manifest_row``; a file whose sidecar and root manifest claim different licences carries
    ``license_claims`` (both), and one whose sidecar is unusable carries ``sidecar_error``.
    ``files`` is the directory's or prefix's listing when the caller already has it (sorted).
    Raises SourceError when the source does not exist or holds nothing.
    """
    source = str(source)
    limits = limits or LimitsPolicy()
    if is_manifest(source) and not _is_dir(source):
        rows = read_manifest(storage, source, limits)
        if not rows:
            raise SourceError(f"manifest {source} has no rows")
        return rows
    files = storage.list(source) if files is None else files
    if not files:
        if not is_s3(source) and not storage.exists(source):
            raise SourceError(f"source does not exist: {source}")
        raise SourceError(f"source holds no files: {source}")
    names = set(files)
    root_manifest = next((join(source, n) for n in MANIFEST_NAMES if join(source, n) in names), None)
    by_uri = manifest_index(read_manifest(storage, root_manifest, limits), root_manifest) if root_manifest else {}
    rows = [row for _, row in file_rows(storage, files, names, by_uri, root_manifest, limits)]
    if not rows:
        raise SourceError(f"source holds no input files (only manifests or sidecars): {source}")
    return rows


def manifest_index(rows: list[dict], root_manifest: str | None) -> dict[str, dict]:
    """A root manifest's rows (in file order) by uri, and by file name for the rows that name a
    file of the manifest's own folder (``shared.mp4``). A file matches its own uri's row, else the
    first such row of its name, whichever folder it is in. A row naming a file in a subfolder
    (``set1/clip.mp4``) speaks for that file only: it once also lent its licence to every unlisted
    file of the same name in other folders."""
    by_uri: dict[str, dict] = {}
    for r in rows:
        by_uri[r["uri"]] = r
        if root_manifest and names_by_bare_name(r["uri"], manifest_folder(root_manifest)):
            by_uri.setdefault(basename(r["uri"]), r)
    return by_uri


def names_by_bare_name(row_uri: str, manifest_dir: str) -> bool:
    """Whether a root-manifest row (its uri resolved) names a file of the manifest's own folder:
    such a row speaks for every file of that name, in any folder (``manifest_index``)."""
    return _parent(row_uri) == manifest_dir


def related_key(uri: str) -> str:
    """What a file shares with its sidecars and with the root-manifest rows that can describe it:
    its name up to the first dot (``clip.mp4``, ``clip.json``, ``clip.mp4.json`` -> ``clip``).
    The distributed ingest groups files by it, so each group can be judged on its own."""
    return basename(uri).split(".", 1)[0]


def file_rows(storage: Storage, files: list[str], names: set[str], by_uri: dict[str, dict],
              root_manifest: str | None, limits: LimitsPolicy) -> list[tuple[int, dict]]:
    """``(index in files, input row)`` for each listed file that is an input: not the root
    manifest, not hidden, not a sidecar. ``names`` must hold every file related to these
    (``related_key``), ``by_uri`` the root manifest's rows for them (``manifest_index``)."""
    out = []
    prefixes = _dot_prefixes(names)
    for i, uri in enumerate(files):
        name = basename(uri)
        if uri == root_manifest or name.startswith(".") or _is_sidecar(uri, names, prefixes):
            continue
        sidecar = _sidecar(storage, uri, names, limits)
        listed = by_uri.get(uri) or by_uri.get(name)
        # The sidecar's fields over the root manifest's (a sidecar may give only a title).
        meta = {**(listed or {}), **{k: v for k, v in (sidecar or {}).items() if v is not None}}
        row = {"uri": uri, "license": _clean(meta.get("license")), **{c: _clean(meta.get(c)) for c in OPTIONAL_COLUMNS}}
        if sidecar and sidecar.get("_sidecar_error"):
            row["sidecar_error"] = sidecar["_sidecar_error"]
        elif sidecar is not None and listed is not None and "license" in sidecar:
            # Both speak for the file: the licence decision must not depend on which one we read.
            # (A sidecar without a licence key, only a title, makes no claim.)
            row["license_claims"] = [_clean(sidecar.get("license")), listed.get("license")]
        out.append((i, row))
    return out


def _is_dir(uri: str) -> bool:
    return not is_s3(uri) and Path(uri).is_dir()


def _sidecar(storage: Storage, uri: str, names: set[str], limits: LimitsPolicy) -> dict | None:
    """The sidecar's metadata, or ``{"_sidecar_error": why}`` for one that cannot be trusted: too
    large, not JSON, nested too deep, or with a non-text licence. Never raises for its content."""
    stem = uri.rsplit(".", 1)[0] if "." in basename(uri) else uri
    for cand in (uri + ".json", stem + ".json"):
        if cand in names and cand != uri:
            name = basename(cand)
            size = storage.size(cand)
            if size > limits.max_sidecar_bytes:
                return {"_sidecar_error": f"sidecar {name} is {size} bytes, over limits.max_sidecar_bytes={limits.max_sidecar_bytes}"}
            try:
                meta = json.loads(storage.read_bytes(cand))
            except (json.JSONDecodeError, UnicodeDecodeError):
                return {"_sidecar_error": f"sidecar {name} is not valid JSON"}
            except RecursionError:
                return {"_sidecar_error": f"sidecar {name} is nested deeper than limits.max_json_depth={limits.max_json_depth}"}
            if not isinstance(meta, dict):
                return {"_sidecar_error": f"sidecar {name} must hold a JSON object, got {type(meta).__name__}"}
            if _json_depth(meta) > limits.max_json_depth:
                return {"_sidecar_error": f"sidecar {name} is nested deeper than limits.max_json_depth={limits.max_json_depth}"}
            for key in ("license", *OPTIONAL_COLUMNS):
                if meta.get(key) is not None and not isinstance(meta[key], (str, int, float)):
                    return {"_sidecar_error": f"sidecar {name}: {key} must be text, got {type(meta[key]).__name__}"}
            return meta
    return None


def _json_depth(value, limit: int = 10_000) -> int:
    """Nesting depth of parsed JSON, iteratively (a hostile document must not overflow the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            break
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def _claim(license_id: str | None) -> str:
    """A licence claim as compared: SPDX ids case-insensitively, no licence as 'none'."""
    return license_id.strip().lower() if license_id and license_id.strip() else "none"


def _conflict(claims: list[str | None]) -> str | None:
    shown: dict[str, str] = {}
    for c in claims:
        shown.setdefault(_claim(c), (c or "").strip() or "none")
    if len(shown) < 2:
        return None
    return f"license: conflicting claims ({' vs '.join(shown[k] for k in sorted(shown))})"


def check_uri(uri: str, allow: list[str]) -> str | None:
    """Why ``uri`` may not be read, or None: only local paths and s3:// (ffmpeg would open any URL
    it is given), and only under ``sources.allow`` when that is set (symlinks resolved)."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme and scheme != "s3":
        return f"source: {scheme}:// uris are not read (only local paths and s3://)"
    if not allow:
        return None
    if is_s3(uri):
        for root in allow:
            if is_s3(root) and (uri == root.rstrip("/") or uri.startswith(root.rstrip("/") + "/")):
                return None
    else:
        real = Path(uri).resolve()
        for root in allow:
            if not is_s3(root) and real.is_relative_to(Path(root).resolve()):
                return None
    return "source: outside the allowed roots (sources.allow)"


def ingest_rows(storage: Storage, source: str, run_id: str, policy, files: list[str] | None = None) -> list[dict]:
    """Discovery + the source and licence rules: one ledger-ready row per input.

    Licence is checked here, before any download or decode: media we may not use is never read.
    A uri listed with more than one distinct licence claim is rejected on every row, whatever
    the order of the rows; identical repeated rows are duplicates of the first. ``files``: a
    directory's or prefix's listing, when the caller already has it.
    """
    found = discover(storage, source, policy.limits, files=files)
    return judge_inputs([{**r, "position": i} for i, r in enumerate(found)], run_id, policy)


def judge_inputs(found: list[dict], run_id: str, policy) -> list[dict]:
    """``ingest_rows``' rules over discovered rows, each with its ``position`` (0-based) among all
    the source's inputs. ``found`` must hold every row of each uri it holds (the rules compare a
    uri's rows: conflicting licences, repeats), in any order; rows come back in position order."""
    from reelflow.curation.filters import check_license

    found = sorted(found, key=lambda r: r["position"])
    claims: dict[str, list[str | None]] = {}
    for r in found:
        if r["uri"]:
            claims.setdefault(r["uri"], []).extend(r.get("license_claims") or [r.get("license")])
    out: list[dict] = []
    seen: dict[str, int] = {}
    for r in found:
        uri, i = r["uri"], r["position"]
        # Empty or repeated URIs still get their own ledger row, under an id made unique by position.
        item = video_id(uri) if uri and uri not in seen else video_id(f"{uri}#input{i}")
        status, reason = OK, None
        if not uri:
            status, reason = REJECTED, f"manifest row {r.get('manifest_row')}: empty uri"
        elif conflict := _conflict(claims[uri]):
            status, reason = REJECTED, conflict
        elif uri in seen:
            status, reason = REJECTED, f"duplicate uri: already listed as input #{seen[uri] + 1}"
        elif r.get("sidecar_error"):
            status, reason = REJECTED, f"license: {r['sidecar_error']}"
        elif why := check_uri(uri, policy.sources.allow):
            status, reason = REJECTED, why
        elif why := check_license(r.get("license"), policy):
            status, reason = REJECTED, why
        if uri:
            seen.setdefault(uri, i)
        out.append(
            {
                "run_id": run_id, "item_id": item, "kind": VIDEO, "parent_id": None,
                "source_uri": redact(uri), "stage": "ingest", "status": status, "reason": redact(reason),
                "license": r.get("license"), "title": r.get("title"),
                "description": r.get("description"), "source_id": r.get("source_id") or item,
            }
        )
    return out
