"""Persisted stage tables: ``OUTPUT/_stages/<stage>/part-*.parquet``.

The table is the checkpoint. Parts are written whole (atomic rename locally, one PUT on S3), so a
crash leaves either a complete part or none; a rerun reads the parts, skips every input already
present and processes only the rest. Nothing here repairs a table: a part that breaks the
contract (duplicate keys, missing columns) is left for the stage's gate to stop.
"""

from __future__ import annotations

import io
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from curation.records import STAGE_SCHEMAS, to_table
from curation.storage import Storage, join


class StageStore:
    def __init__(self, storage: Storage, output: str):
        self.storage = storage
        self.output = output

    def stage_dir(self, stage: str) -> str:
        return join(self.output, "_stages", stage)

    def parts(self, stage: str) -> list[str]:
        return [u for u in self.storage.list(self.stage_dir(stage)) if u.rsplit("/", 1)[-1].startswith("part-") and u.endswith(".parquet")]

    def read(self, stage: str) -> pa.Table:
        schema = STAGE_SCHEMAS[stage]
        tables = []
        for uri in self.parts(stage):
            t = pq.read_table(io.BytesIO(self.storage.read_bytes(uri)))
            tables.append(t)
        if not tables:
            return schema.empty_table()
        table = pa.concat_tables(tables, promote_options="permissive")
        return table

    def write_part(self, stage: str, rows: list[dict]) -> str | None:
        if not rows:
            return None
        table = to_table(rows, STAGE_SCHEMAS[stage])
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        uri = join(self.stage_dir(stage), f"part-{uuid.uuid4().hex[:12]}.parquet")
        self.storage.write_bytes(uri, buf.getvalue())
        return uri

    def clear(self, stage: str) -> None:
        for uri in self.parts(stage):
            self.storage.delete(uri)

    def done_inputs(self, stage: str, id_column: str) -> set[str]:
        t = self.read(stage)
        if t.num_rows == 0 or id_column not in t.column_names:
            return set()
        return {x for x in t.column(id_column).to_pylist() if x is not None}

