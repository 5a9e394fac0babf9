"""Ingest of a large manifest where the rows lie (#14 item 1): the driver streams, the workers judge.

``sources.ingest_rows`` reads a whole manifest into the driver as dicts. A manifest estimated at
more than ``runtime.driver_max_rows`` rows is ingested as a shuffle instead:

1. the driver streams the file (an S3 manifest is downloaded to local disk first, never held in
   memory) as Arrow record batches of ``BATCH_ROWS`` rows, C++ parsing only, and puts each into
   the object store;
2. a map task per batch turns its rows into inputs (``sources.manifest_rows``: uris resolved,
   text trimmed, rows numbered) and splits them by uri into P tables;
3. reduce task p gets every row of its uris (the rules compare a uri's rows: conflicting licence
   claims, repeats) and applies ``sources.judge_inputs``, the rules of the in-driver path, then
   writes ``part-ingest-<p>.parquet``.

The rows are those of ``ingest_rows`` on the same manifest (a test compares them). A finished
marker closes the table: a crash in between leaves parts without it, and a resume ingests again
(deterministically). Directory and prefix sources are still listed in the driver.
"""

from __future__ import annotations

import io
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
    SourceError,
    check_manifest_columns,
    is_manifest,
    judge_inputs,
    manifest_folder,
    manifest_rows,
)
from reelflow.curation.stage_store import StageStore
from reelflow.curation.storage import Storage

BATCH_ROWS = 65_536  # manifest rows per map task
ROWS_PER_PARTITION = 500_000  # inputs a reduce task judges
MAX_PARTITIONS = 256
BYTES_PER_ROW = 64  # a conservative manifest row size, to estimate rows from bytes (csv, jsonl)
PART_PREFIX = "part-ingest-"


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


def run_distributed(storage: Storage, source: str, run_id: str, policy, store: StageStore,
                    partitions: int | None = None) -> dict[str, int]:
    """Ingest the manifest ``source`` (see the module doc); returns the inputs per status."""
    limits = policy.limits
    size = storage.size(source)
    if size > limits.max_manifest_bytes:
        raise SourceError(f"manifest {source} is {size} bytes, over limits.max_manifest_bytes={limits.max_manifest_bytes}")
    path = str(storage.localize(source))
    est = estimated_rows(storage, source) or 1
    n = partitions or max(1, min(MAX_PARTITIONS, math.ceil(est / ROWS_PER_PARTITION)))
    base = manifest_folder(source)
    store.clear("ingest")
    maps, seen = [], 0
    for t in _rebatched(_batches(path, source)):
        if not maps:
            check_manifest_columns(t.column_names, source)
        out = _map_task.options(num_returns=n).remote(ray.put(t), base, seen + 1, n)
        maps.append([out] if n == 1 else list(out))
        seen += t.num_rows
    if not seen:
        raise SourceError(f"manifest {source} has no rows")
    table = TableRef(store.output, storage.s3)
    counts: dict[str, int] = {}
    for got in ray.get([_reduce_task.remote(table, run_id, policy, p, *[m[p] for m in maps]) for p in range(n)]):
        for k, v in got.items():
            counts[k] = counts.get(k, 0) + v
    store.mark_finished("ingest", "ingest", seen)
    return counts


def finished(store: StageStore) -> bool:
    """Whether the ingest table is complete: written in one part by the in-driver path, or closed
    by the distributed path's marker (its parts alone may be a crashed run's)."""
    parts = store.parts("ingest")
    if not parts:
        return False
    if any(u.rsplit("/", 1)[-1].startswith(PART_PREFIX) for u in parts):
        return store.finished("ingest", "ingest") is not None
    return True
