"""The run's output tables (``ledger``, ``index``) as partitioned datasets, and how to read them.

Each is a folder of parquet parts under OUTPUT (``ledger/part-00000.parquet``, ...), written by the
workers that build them: no process holds a whole table, and no object comes near S3's 5 GB
single-PUT limit. Runs up to ``runtime.single_file_max_rows`` rows also get the single-file export
(``ledger.parquet``, ``index.parquet``), streamed part by part into one file and uploaded with a
multipart upload (boto3's ``upload_file``), so the driver holds one part at a time.

Readers go through ``read``/``uris``, which take the single file when there is one and the parts
otherwise: a consumer works the same on a 100-clip demo and a 10M-clip run.
"""

from __future__ import annotations

import io
import os
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq

from reelflow.curation.storage import Storage, join

LEDGER = "ledger"
INDEX = "index"
NAMES = (LEDGER, INDEX)


def single_file(output: str, name: str) -> str:
    return join(output, f"{name}.parquet")


def parts_dir(output: str, name: str) -> str:
    return join(output, name)


def part_uri(output: str, name: str, i: int) -> str:
    return join(parts_dir(output, name), f"part-{i:05d}.parquet")


def part_uris(storage: Storage, output: str, name: str) -> list[str]:
    return [u for u in storage.list(parts_dir(output, name))
            if u.rsplit("/", 1)[-1].startswith("part-") and u.endswith(".parquet")]


def uris(storage: Storage, output: str, name: str) -> list[str]:
    """The files that hold table ``name``: the single file where written, else its parts ([] if neither)."""
    one = single_file(output, name)
    if storage.exists(one):
        return [one]
    return part_uris(storage, output, name)


def location(storage: Storage, output: str, name: str) -> str:
    """What to show a person: the single file where written, else the folder of parts."""
    one = single_file(output, name)
    return one if storage.exists(one) else parts_dir(output, name) + "/"


def exists(storage: Storage, output: str, name: str) -> bool:
    return bool(uris(storage, output, name))


def read(storage: Storage, output: str, name: str, columns: list[str] | None = None) -> pa.Table:
    """Table ``name`` (or its ``columns``) in this process: for consumers that need all of it."""
    files = uris(storage, output, name)
    if not files:
        raise FileNotFoundError(f"{output} has no {name} table ({name}.parquet or {name}/part-*.parquet)")
    tables = [pq.read_table(io.BytesIO(storage.read_bytes(u)), columns=columns) for u in files]
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")


def clear(storage: Storage, output: str, name: str) -> None:
    """Remove both forms of ``name``: the outputs step rewrites them whole on every run."""
    storage.delete(single_file(output, name))
    storage.delete_prefix(parts_dir(output, name))


def write_part(storage: Storage, output: str, name: str, i: int, table: pa.Table) -> str:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    uri = part_uri(output, name, i)
    storage.write_bytes(uri, buf.getvalue())
    return uri


def write_single_file(storage: Storage, output: str, name: str, schema: pa.Schema) -> int:
    """Concatenate the parts of ``name`` (in part order) into ``name.parquet``: streamed through a
    local temporary file one part at a time, then uploaded (multipart on S3). Returns its rows."""
    rows = 0
    fd, tmp = tempfile.mkstemp(suffix=".parquet", prefix=f"reelflow-{name}-")
    os.close(fd)
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for uri in part_uris(storage, output, name):
                t = pq.read_table(io.BytesIO(storage.read_bytes(uri))).cast(schema)
                writer.write_table(t)
                rows += t.num_rows
        storage.upload_file(tmp, single_file(output, name))
    finally:
        os.unlink(tmp)
    return rows
