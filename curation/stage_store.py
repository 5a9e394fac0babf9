"""Persisted stage tables: ``OUTPUT/_stages/<stage>/part-*.parquet``.

The table is the checkpoint. Parts are written whole (atomic rename locally, one PUT on S3), so a
crash leaves either a complete part or none; a rerun reads the parts, skips every input already
present and processes only the rest. Nothing here repairs a table: a part that breaks the
contract (duplicate keys, missing columns) is left for the stage's gate to stop.

Parts are written by the Ray workers (``ray_tables.PartSink``) and named from the inputs they
answer (``part_name``): a retried write task overwrites its own part and never adds a duplicate.
This module knows nothing about Ray; ``read`` materialises a whole table and is for small tables,
tests and tools — the pipeline reads stage tables as Ray Datasets.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reelflow.curation.records import STAGE_SCHEMAS, to_table
from reelflow.curation.storage import Storage, basename, join


def part_name(input_ids: Iterable[str]) -> str:
    """A part's file name from the ids of the inputs it answers: the same inputs always make the
    same name, so a write task that Ray retries replaces its part instead of adding a copy."""
    digest = hashlib.sha1("\n".join(sorted(set(input_ids))).encode()).hexdigest()[:20]
    return f"part-{digest}.parquet"


def _read_columns(data: bytes, wanted: list[str]) -> pa.Table:
    """The ``wanted`` columns a part has (older parts may lack newer columns)."""
    f = pq.ParquetFile(io.BytesIO(data))
    return f.read(columns=[c for c in wanted if c in f.schema_arrow.names])


class StageStore:
    def __init__(self, storage: Storage, output: str):
        self.storage = storage
        self.output = output

    def stage_dir(self, stage: str) -> str:
        return join(self.output, "_stages", stage)

    def parts(self, stage: str) -> list[str]:
        return [u for u in self.storage.list(self.stage_dir(stage)) if u.rsplit("/", 1)[-1].startswith("part-") and u.endswith(".parquet")]

    def read(self, stage: str) -> pa.Table:
        """The whole table, in this process: for small tables, tests and tools."""
        tables = [self.read_part(stage, uri) for uri in self.parts(stage)]
        if not tables:
            return STAGE_SCHEMAS[stage].empty_table()
        return _superseded_dropped(pa.concat_tables(tables, promote_options="permissive"))

    def read_part(self, stage: str, uri: str, columns: list[str] | None = None) -> pa.Table:
        """One part, conformed to the stage's schema (or to ``columns`` of it)."""
        schema = STAGE_SCHEMAS[stage]
        wanted = columns or schema.names
        table = _read_columns(self.storage.read_bytes(uri), wanted)
        # Parts written before a column was added (an OUTPUT resumed by a newer version) lack it.
        for name in wanted:
            if name not in table.column_names:
                f = schema.field(name)
                table = table.append_column(f, pa.nulls(table.num_rows, f.type))
        return table.select(wanted)

    def write_part(self, stage: str, rows: list[dict] | pa.Table, name: str | None = None) -> str | None:
        """Write ``rows`` as one part; ``name`` (see ``part_name``) makes a retry overwrite it."""
        table = rows if isinstance(rows, pa.Table) else to_table(rows, STAGE_SCHEMAS[stage])
        if table.num_rows == 0:
            return None
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        uri = join(self.stage_dir(stage), name or f"part-{uuid.uuid4().hex[:12]}.parquet")
        self.storage.write_bytes(uri, buf.getvalue())
        return uri

    def clear(self, stage: str) -> None:
        for uri in self.parts(stage):
            self.storage.delete(uri)
        self.storage.delete(self._marker(stage))

    # -- finished stages ------------------------------------------------------------------------
    # A per-item stage that answered every input of its input table, with no failure a resume
    # would retry, leaves a marker naming both tables' parts. While neither table gains or loses
    # a part, a rerun skips the stage without reading either (as Hadoop's _SUCCESS file).
    def _marker(self, stage: str) -> str:
        return join(self.stage_dir(stage), "_FINISHED.json")

    def _parts_digest(self, stage: str) -> str:
        return hashlib.sha1("\n".join(basename(u) for u in self.parts(stage)).encode()).hexdigest()

    def mark_finished(self, stage: str, input_stage: str, inputs: int) -> None:
        info = {"inputs": inputs, "input_parts": self._parts_digest(input_stage), "parts": self._parts_digest(stage)}
        self.storage.write_bytes(self._marker(stage), json.dumps(info).encode())

    def finished(self, stage: str, input_stage: str) -> int | None:
        """The inputs a finished stage answered, or None when it must run (or check) again."""
        uri = self._marker(stage)
        if not self.storage.exists(uri):
            return None
        info = json.loads(self.storage.read_bytes(uri))
        if info["parts"] != self._parts_digest(stage) or info["input_parts"] != self._parts_digest(input_stage):
            return None
        return int(info["inputs"])

    def drop_retryable(self, stage: str) -> int:
        """Remove the rows of items that failed with a transient error, so the stage runs them
        again (resume); one part at a time here (``ray_tables.drop_retryable`` runs the same over
        the cluster). Returns the rows dropped."""
        return sum(self.drop_retryable_part(stage, uri) for uri in self.parts(stage))

    def drop_retryable_part(self, stage: str, uri: str) -> int:
        """The part without its retryable failures, replaced in place (one atomic write of the
        same name): no crash leaves a row twice or loses a kept one."""
        data = self.storage.read_bytes(uri)
        flags = _read_columns(data, ["status", "retryable"])
        if "retryable" not in flags.column_names:
            return 0
        drop = pc.and_(pc.equal(flags["status"], "failed"), pc.fill_null(flags["retryable"], False))
        n = pc.sum(drop).as_py() or 0
        if n == flags.num_rows:
            self.storage.delete(uri)
        elif n:
            self.write_part(stage, pq.read_table(io.BytesIO(data)).filter(pc.invert(drop)), name=basename(uri))
        return n




def _superseded_dropped(table: pa.Table) -> pa.Table:
    """Rows of one item written more than once: a transient failure retried by a later run, or a
    part rewritten by ``drop_retryable`` just before a crash. The retry's row supersedes the
    retryable failure, and identical copies collapse; any other duplicate stays for the gate."""
    if table.num_rows == 0 or "item_id" not in table.column_names:
        return table
    ids = table.column("item_id")
    if pc.count_distinct(ids).as_py() == table.num_rows:
        return table
    rows = table.to_pylist()
    by_id: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_id.setdefault(r["item_id"], []).append(i)
    drop: set[int] = set()
    for idx in by_id.values():
        if len(idx) == 1:
            continue
        live = [i for i in idx if not (rows[i]["status"] == "failed" and rows[i].get("retryable"))]
        if live:
            drop.update(i for i in idx if i not in live)
        else:
            live = idx[-1:]
            drop.update(idx[:-1])
        seen: list[dict] = []
        for i in live:
            if rows[i] in seen:
                drop.add(i)
            else:
                seen.append(rows[i])
    if not drop:
        return table
    return table.take(pa.array([i for i in range(table.num_rows) if i not in drop], pa.int64()))
