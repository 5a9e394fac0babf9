"""Ingest of a large source where the rows lie (#14 item 1): the workers read, list and judge.

``sources.ingest_rows`` reads a whole manifest into the driver as dicts. A manifest estimated at
more than ``runtime.driver_max_rows`` rows is ingested as a shuffle instead:

1. a reader task streams the file (an S3 manifest is downloaded to its local disk first, never
   held in memory) as Arrow record batches of ``BATCH_ROWS`` rows, C++ parsing only, yielding each
   to the object store (a streaming generator: the driver sees only row counts and references);
2. a map task per batch turns its rows into inputs (``sources.manifest_rows``: uris resolved,
   text trimmed, rows numbered) and splits them by uri into P tables;
3. reduce task p gets every row of its uris (the rules compare a uri's rows: conflicting licence
   claims, repeats) and applies ``sources.judge_inputs``, the rules of the in-driver path, then
   writes ``part-ingest-<p>.parquet``.

The rows are those of ``ingest_rows`` on the same manifest (a test compares them). A finished
marker closes the table: a crash in between leaves parts without it, and a resume ingests again
(deterministically).

A directory or ``s3://`` prefix source is listed by the driver only up to
``runtime.driver_max_rows`` files (``listed_within``). Beyond that it is ingested the same way
(``run_distributed_listing``):

1. the driver lists the source's top level (streamed, a page at a time): its files go to the object
   store in ``BATCH_ROWS`` chunks, and its sub-folders to listing tasks that list them whole on the
   workers (``LIST_DIRS_PER_TASK`` folders a task at first, more as the folders keep coming);
2. the root manifest, if any, is streamed; its rows are resolved, and those naming a file of the
   top folder by bare name (which speak for every file of that name, in any folder) counted;
3. a map task per chunk splits the files by ``partition_key``, so a file, its sidecars and the
   root manifest's rows that can describe it meet in one partition: by folder and name up to the
   first dot while the bare-name rows are at most ``BROADCAST_BARE_ROWS`` (each partition gets
   them all), else by that name alone (a name repeated in many folders then stays together);
4. reduce task p applies the in-driver path's rules to its files (``sources.file_rows``, then
   ``judge_inputs``) and writes ``part-ingest-<p>.parquet``.

The driver holds counts and object references, never the listing (a page of it at most).
Inputs are numbered in listing order (the top level's files, then each folder's), not in the
in-driver path's sorted order; the rows are the same (a test compares them).
"""

from __future__ import annotations

import io
import itertools
import math
import zlib
from collections import Counter
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
import ray

from reelflow.curation.ray_tables import TableRef
from reelflow.curation.records import STAGE_SCHEMAS, to_table
from reelflow.curation.sources import (
    MANIFEST_NAMES,
    SourceError,
    check_manifest_columns,
    file_rows,
    is_manifest,
    judge_inputs,
    manifest_folder,
    manifest_index,
    manifest_rows,
    names_by_bare_name,
    related_key,
)
from reelflow.curation.stage_store import StageStore
from reelflow.curation.storage import S3Config, Storage, basename, join

BATCH_ROWS = 65_536  # manifest rows per map task
ROWS_PER_PARTITION = 500_000  # inputs a reduce task judges
MAX_PARTITIONS = 256
BYTES_PER_ROW = 64  # a conservative manifest row size, to estimate rows from bytes (csv, jsonl)
PART_PREFIX = "part-ingest-"
LIST_DIRS_PER_TASK = 16  # top-level folders the first listing tasks list ...
MAX_DIRS_PER_TASK = 1024  # ... doubling every 64 tasks up to this (10M folders: ~10k tasks, not 625k)
BROADCAST_BARE_ROWS = 100_000  # root-manifest rows by bare name that every reduce task can be sent


def estimated_rows(storage: Storage, source: str) -> int | None:
    """Rows a manifest source holds (Parquet: its footer; CSV/JSONL: from its size), None for a
    directory or prefix source."""
    if not is_manifest(source) or not storage.exists(source):
        return None
    if source.lower().endswith(".parquet"):
        try:
            return pq.ParquetFile(storage.localize(source)).metadata.num_rows
        except (OSError, pa.ArrowInvalid):
            return 0  # not Parquet after all: the in-driver path says so
    return storage.size(source) // BYTES_PER_ROW


def _batches(path: str, uri: str) -> Iterator[pa.RecordBatch]:
    """The manifest's rows as record batches, streamed from a local file."""
    low = uri.lower()
    try:
        if low.endswith(".csv"):
            with pacsv.open_csv(path) as probe:  # the header's names, to read every column as text
                names = probe.schema.names
            opts = pacsv.ConvertOptions(strings_can_be_null=True, column_types={n: pa.string() for n in names})
            with pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=8 << 20),
                                convert_options=opts) as reader:
                yield from reader
        elif low.endswith(".jsonl"):
            with open(path, "rb") as f:
                while lines := f.readlines(32 << 20):
                    yield from pajson.read_json(io.BytesIO(b"".join(lines))).to_batches()
        else:
            yield from pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)
    except (pa.ArrowInvalid, OSError) as e:
        raise SourceError(f"manifest {uri} cannot be parsed: {e}") from e


def _rebatched(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.Table]:
    """``BATCH_ROWS``-row tables (the last one shorter) from batches of any size."""
    held: list[pa.RecordBatch] = []
    n = 0
    for b in batches:
        held.append(b)
        n += b.num_rows
        while n >= BATCH_ROWS:
            t = pa.Table.from_batches(held)
            yield t.slice(0, BATCH_ROWS)
            rest = t.slice(BATCH_ROWS)
            held, n = rest.to_batches(), rest.num_rows
    if n:
        yield pa.Table.from_batches(held)


@ray.remote(num_cpus=1)
def _map_task(batch: pa.Table, base: str, first_row: int, n: int):
    rows = manifest_rows(batch, base, first_row)
    parts: list[list[dict]] = [[] for _ in range(n)]
    for r in rows:
        r["position"] = r["manifest_row"] - 1
        parts[zlib.crc32(r["uri"].encode()) % n].append(r)
    out = [pa.Table.from_pylist(p, schema=_INPUT_SCHEMA) for p in parts]
    return out[0] if n == 1 else tuple(out)


_INPUT_SCHEMA = pa.schema([("uri", pa.string()), ("license", pa.string()), ("title", pa.string()),
                           ("description", pa.string()), ("source_id", pa.string()),
                           ("manifest_row", pa.int64()), ("position", pa.int64())])


@ray.remote(num_cpus=1)
def _reduce_task(table: TableRef, run_id: str, policy, p: int, *tables: pa.Table) -> dict:
    rows = judge_inputs(pa.concat_tables(tables).to_pylist(), run_id, policy)
    table.store().write_part("ingest", to_table(rows, STAGE_SCHEMAS["ingest"]), name=f"{PART_PREFIX}{p:05d}.parquet")
    return dict(Counter(r["status"] for r in rows))


@ray.remote(num_cpus=1, num_returns="streaming")
def _read_manifest_task(s3: S3Config, uri: str):
    """The manifest's rows as ``BATCH_ROWS``-row tables, each yielded after its row count. A worker
    reads the file (an S3 manifest is downloaded to its disk), so the batches reach the object
    store without passing through the driver."""
    path = str(Storage(s3).localize(uri))
    first = True
    for t in _rebatched(_batches(path, uri)):
        if first:
            check_manifest_columns(t.column_names, uri)
            first = False
        yield t.num_rows
        yield t


def _split_manifest(storage: Storage, uri: str, n: int, split, limits) -> tuple[list[list], int]:
    """Run ``split`` (a map task of ``n`` returns: batch, base, first_row, n) on each batch of the
    manifest as the reader yields it. Returns each batch's ``n`` output refs and the rows read."""
    size = storage.size(uri)
    if size > limits.max_manifest_bytes:
        raise SourceError(f"manifest {uri} is {size} bytes, over limits.max_manifest_bytes={limits.max_manifest_bytes}")
    maps, seen = [], 0
    batches = iter(_read_manifest_task.remote(storage.s3, uri))
    for count in batches:
        rows = ray.get(count)  # raises the reader's error: a SourceError for a malformed manifest
        out = split.options(num_returns=n).remote(next(batches), manifest_folder(uri), seen + 1, n)
        maps.append([out] if n == 1 else list(out))
        seen += rows
    return maps, seen


def run_distributed(storage: Storage, source: str, run_id: str, policy, store: StageStore,
                    partitions: int | None = None) -> dict[str, int]:
    """Ingest the manifest ``source`` (see the module doc); returns the inputs per status."""
    est = estimated_rows(storage, source) or 1
    n = partitions or max(1, min(MAX_PARTITIONS, math.ceil(est / ROWS_PER_PARTITION)))
    store.clear("ingest")
    maps, seen = _split_manifest(storage, source, n, _map_task, policy.limits)
    if not seen:
        raise SourceError(f"manifest {source} has no rows")
    table = TableRef(store.output, storage.s3)
    counts: dict[str, int] = {}
    for got in ray.get([_reduce_task.remote(table, run_id, policy, p, *[m[p] for m in maps]) for p in range(n)]):
        for k, v in got.items():
            counts[k] = counts.get(k, 0) + v
    store.mark_finished("ingest", "ingest", seen)
    return counts


def listed_within(storage: Storage, source: str, max_files: int) -> list[str] | None:
    """A directory's or prefix's files, sorted, when it holds at most ``max_files``; None when it
    holds more (the listing stops at the first file over: its cost is bounded, not the source's)."""
    head = list(itertools.islice(storage.iter_files(source), max_files + 1))
    return sorted(head) if len(head) <= max_files else None


@ray.remote(num_cpus=1, num_returns=2)
def _list_task(s3: S3Config, folders: list[str]) -> tuple[int, pa.Table]:
    """Every file under ``folders``, in listing order: ``(count, table of uris)``."""
    storage = Storage(s3)
    uris = pa.array(list(itertools.chain.from_iterable(storage.iter_files(f) for f in folders)), pa.string())
    return len(uris), pa.table({"uri": uris})


def partition_key(uri: str, by_folder: bool) -> str:
    """Where a file, its sidecars and the root-manifest rows that can describe it meet: its folder
    and its name up to the first dot (``sources.related_key``), or that name alone."""
    return f"{uri.rpartition('/')[0]}/{related_key(uri)}" if by_folder else related_key(uri)


def _split_by_uri(table: pa.Table, n: int, by_folder: bool):
    uris = table.column("uri").to_pylist()
    parts: list[list[int]] = [[] for _ in range(n)]
    for i, u in enumerate(uris):
        parts[zlib.crc32(partition_key(u, by_folder).encode()) % n].append(i)
    out = [table.take(pa.array(p, pa.int64())) for p in parts]
    return out[0] if n == 1 else tuple(out)


@ray.remote(num_cpus=1)
def _split_files_task(files: pa.Table, first_position: int, n: int, by_folder: bool):
    positions = pa.array(range(first_position, first_position + files.num_rows), pa.int64())
    return _split_by_uri(pa.table({"uri": files.column("uri"), "position": positions}), n, by_folder)


@ray.remote(num_cpus=1)
def _split_rows_task(rows: pa.Table, n: int, by_folder: bool):
    return _split_by_uri(rows, n, by_folder)


@ray.remote(num_cpus=1, num_returns=3)
def _classify_manifest_task(batch: pa.Table, base: str, first_row: int, _returns: int):
    """A root manifest's batch as inputs (uris resolved against ``base``, the top folder):
    ``(how many name a file of the top folder, those rows, the rows with a sub-folder)``. A row
    by bare name speaks for every file of that name (``sources.manifest_index``)."""
    bare: list[dict] = []
    nested: list[dict] = []
    for r in manifest_rows(batch, base, first_row):
        if r["uri"]:  # a row without a uri describes no file
            (bare if names_by_bare_name(r["uri"], base) else nested).append(r)
    schema = pa.schema([f for f in _INPUT_SCHEMA if f.name != "position"])
    return len(bare), pa.Table.from_pylist(bare, schema=schema), pa.Table.from_pylist(nested, schema=schema)


@ray.remote(num_cpus=1)
def _judge_files_task(table: TableRef, run_id: str, policy, root_manifest: str | None, p: int,
                      n_file_tables: int, *tables: pa.Table) -> dict:
    """Partition ``p``: its files (the first ``n_file_tables`` tables), then the root manifest's
    rows that can describe them, judged as the in-driver path judges them."""
    files = pa.concat_tables(tables[:n_file_tables]).sort_by("position")
    uris, positions = files.column("uri").to_pylist(), files.column("position").to_pylist()
    listed = pa.concat_tables(tables[n_file_tables:]).sort_by("manifest_row").to_pylist() if len(tables) > n_file_tables else []
    storage = Storage(table.s3)
    found = [{**row, "position": positions[i]}
             for i, row in file_rows(storage, uris, set(uris), manifest_index(listed, root_manifest), root_manifest, policy.limits)]
    rows = judge_inputs(found, run_id, policy)
    table.store().write_part("ingest", to_table(rows, STAGE_SCHEMAS["ingest"]), name=f"{PART_PREFIX}{p:05d}.parquet")
    return dict(Counter(r["status"] for r in rows))


def _dirs_per_task(tasks_so_far: int) -> int:
    """Folders for the next listing task: few at first (a small tree is spread over the workers),
    twice as many every 64 tasks, up to ``MAX_DIRS_PER_TASK``."""
    return min(MAX_DIRS_PER_TASK, LIST_DIRS_PER_TASK << (tasks_so_far // 64))


def run_distributed_listing(storage: Storage, source: str, run_id: str, policy, store: StageStore,
                            partitions: int | None = None) -> dict[str, int]:
    """Ingest the directory or prefix ``source`` on the workers (see the module doc); returns the
    inputs per status."""
    store.clear("ingest")
    s3 = storage.s3
    top_chunks: list[tuple[int, ray.ObjectRef]] = []  # the top level's files, BATCH_ROWS at a time
    list_tasks: list[tuple[ray.ObjectRef, ray.ObjectRef]] = []  # (count, table) of each listing task
    manifests: set[str] = set()
    files: list[str] = []
    folders: list[str] = []
    # Streamed a page at a time: neither the top level's files nor its folders are ever held whole.
    for page_files, page_dirs in storage.iter_level(source):
        manifests.update(m for m in map(basename, page_files) if m in MANIFEST_NAMES)
        files.extend(page_files)
        folders.extend(page_dirs)
        start = 0  # taken from the front by index, then dropped once: not a copy of the rest per task
        while len(files) - start >= BATCH_ROWS:
            chunk = files[start:start + BATCH_ROWS]
            top_chunks.append((BATCH_ROWS, ray.put(pa.table({"uri": pa.array(chunk, pa.string())}))))
            start += BATCH_ROWS
        del files[:start]
        start = 0
        while len(folders) - start >= (size := _dirs_per_task(len(list_tasks))):
            list_tasks.append(tuple(_list_task.remote(s3, folders[start:start + size])))
            start += size
        del folders[:start]
    if files:
        top_chunks.append((len(files), ray.put(pa.table({"uri": pa.array(files, pa.string())}))))
    if folders:
        list_tasks.append(tuple(_list_task.remote(s3, folders)))
    # Inputs are numbered in this order: the top level's files, then each listing task's.
    listed = top_chunks + list(zip(ray.get([c for c, _ in list_tasks]), [t for _, t in list_tasks]))
    total = sum(c for c, _ in listed)
    if not total:
        raise SourceError(f"source holds no files: {source}")
    n = partitions or max(1, min(MAX_PARTITIONS, math.ceil(total / ROWS_PER_PARTITION)))
    root_manifest = next((join(source, m) for m in MANIFEST_NAMES if m in manifests), None)
    bare: list[ray.ObjectRef] = []
    nested: list[ray.ObjectRef] = []
    n_bare = 0
    if root_manifest:
        maps, _ = _split_manifest(storage, root_manifest, 3, _classify_manifest_task, policy.limits)
        n_bare = sum(ray.get([m[0] for m in maps]))
        bare, nested = [m[1] for m in maps], [m[2] for m in maps]
    # A row by bare name speaks for every file of that name, in any folder. Where such rows are
    # few, every partition gets them all, and files split by folder and name: a name repeated in
    # many folders (<id>/video.mp4) spreads over the partitions. Where they are many, files split
    # by name alone, as those rows do (a name in many folders then stays in one partition).
    by_folder = n_bare <= BROADCAST_BARE_ROWS

    def split(task, ref, *args) -> list:
        out = task.options(num_returns=n).remote(ref, *args, n, by_folder)
        return [out] if n == 1 else list(out)

    file_parts, first = [], 0
    for count, ref in listed:
        if count:
            file_parts.append(split(_split_files_task, ref, first))
        first += count
    row_parts = [split(_split_rows_task, ref) for ref in (nested if by_folder else nested + bare)]
    everywhere = bare if by_folder else []
    table = TableRef(store.output, s3)
    judged = [_judge_files_task.remote(table, run_id, policy, root_manifest, p, len(file_parts),
                                       *[f[p] for f in file_parts], *[r[p] for r in row_parts], *everywhere)
              for p in range(n)]
    out: dict[str, int] = {}
    for got in ray.get(judged):
        for k, v in got.items():
            out[k] = out.get(k, 0) + v
    if not out:
        raise SourceError(f"source holds no input files (only manifests or sidecars): {source}")
    store.mark_finished("ingest", "ingest", sum(out.values()))
    return out


def finished(store: StageStore) -> bool:
    """Whether the ingest table is complete: written in one part by the in-driver path, or closed
    by the distributed path's marker (its parts alone may be a crashed run's)."""
    parts = store.parts("ingest")
    if not parts:
        return False
    if any(u.rsplit("/", 1)[-1].startswith(PART_PREFIX) for u in parts):
        return store.finished("ingest", "ingest") is not None
    return True
