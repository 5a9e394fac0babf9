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
import pyarrow.compute as pc
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
        # Parts written before a column was added (an OUTPUT resumed by a newer version) lack it.
        for f in schema:
            if f.name not in table.column_names:
                table = table.append_column(f, pa.nulls(table.num_rows, f.type))
        return _superseded_dropped(table)

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

    def drop_retryable(self, stage: str) -> int:
        """Remove the rows of items that failed with a transient error, so the stage runs them
        again (resume). Each affected part is rewritten without them, then deleted: a crash in
        between leaves a kept row twice, which ``read`` collapses: nothing is lost or duplicated."""
        dropped = 0
        for uri in self.parts(stage):
            t = pq.read_table(io.BytesIO(self.storage.read_bytes(uri)))
            if "retryable" not in t.column_names:
                continue
            rows = t.to_pylist()
            keep = [r for r in rows if not (r["status"] == "failed" and r.get("retryable"))]
            if len(keep) == len(rows):
                continue
            self.write_part(stage, keep)
            self.storage.delete(uri)
            dropped += len(rows) - len(keep)
        return dropped

    def done_inputs(self, stage: str, id_column: str) -> set[str]:
        t = self.read(stage)
        if t.num_rows == 0 or id_column not in t.column_names:
            return set()
        return {x for x in t.column(id_column).to_pylist() if x is not None}



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
