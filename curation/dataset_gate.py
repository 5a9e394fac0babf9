"""The final dataset gate (``reelflow validate``) where the outputs lie (#14 item 3).

``gates.check_dataset`` reads the whole index, every tar and the whole ledger into one process.
Beyond ``runtime.driver_max_rows`` rows the same suite runs split the way the outputs are:

- one task per index part: the part's row-local index expectations (its embedding columns are
  not read: their presence is a schema check), and the tars of the shards it lists -- a shard's
  rows all sit in one index part, so that part's keys are exactly what those tars must hold --
  streamed through the row-local sample expectations, plus the part's keys with no sample;
- one task per ledger part: the row-local ledger expectations;
- id aggregates for what spans parts (``table_gates.audit``): index keys and ledger ids unique,
  the ledger's videos = the ingested inputs, its accepted clips = the index's keys;
- the tars nobody's index part lists (orphans) from one listing of ``shards/``.

Failures read as ``check_dataset``'s (exit code 3), each naming its first ids and a count.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from reelflow.curation import gates, output_tables, ray_tables, table_gates
from reelflow.curation.gates import FailedExpectation, GateFailed
from reelflow.curation.records import INDEX_SCHEMA, LEDGER_SCHEMA
from reelflow.curation.shard_samples import tar_samples
from reelflow.curation.stage_store import StageStore
from reelflow.curation.storage import S3Config, Storage, join

HEAVY_COLUMNS = ("clip_embedding", "caption_embedding")  # never read by the gate
NOT_ROW_LOCAL = (*table_gates.TABLE_WIDE, "expect_table_columns_to_match_set")
SHOWN = table_gates.SHOWN_IDS


def more_rows_than(storage: Storage, output: str, limit: int) -> bool:
    """Whether the index and the ledger hold more than ``limit`` rows, from their parts' footers;
    stops at the first part that crosses it (an index part of a large run is gigabytes: never
    fetched just to count its rows once the answer is known)."""
    rows = 0
    for name in output_tables.NAMES:
        for u in output_tables.part_uris(storage, output, name):
            rows += pq.ParquetFile(io.BytesIO(storage.read_bytes(u))).metadata.num_rows
            if rows > limit:
                return True
    return False


def _row_local(expectations: list) -> list:
    return [e for e in expectations if e.expectation_type not in NOT_ROW_LOCAL]


def _tagged(where: str, found: list[FailedExpectation]) -> list[dict]:
    return [{"expectation": f"{where}: {f.expectation}", "kwargs": json.dumps(f.kwargs, sort_keys=True, default=str),
             "rows": f.rows[:SHOWN], "n": len(f.rows), "detail": f.detail} for f in found]


def _columns_failure(where: str, names: list[str], schema: pa.Schema) -> list[dict]:
    if set(names) == set(schema.names):
        return []
    return [{"expectation": f"{where}: expect_table_columns_to_match_set",
             "kwargs": json.dumps({"column_set": list(schema.names), "exact_match": True}), "rows": [], "n": 0,
             "detail": f"observed columns: {sorted(names)}"}]


@ray.remote(num_cpus=1)
def _index_part_task(s3: S3Config, output: str, uri: str, policy) -> dict:
    import pandas as pd

    storage = Storage(s3)
    pf = pq.ParquetFile(io.BytesIO(storage.read_bytes(uri)))
    names = pf.schema_arrow.names
    failures = _columns_failure("index", names, INDEX_SCHEMA)
    t = pf.read(columns=[c for c in names if c not in HEAVY_COLUMNS])
    suite = gates.dataset_expectations(policy, [])
    failures += _tagged("index", gates.run_suite("index", gates._to_pandas(t), _row_local(suite["index"]), "key"))
    keys, shards = t["key"].to_pylist(), t["shard"].to_pylist()
    index_keys = dict(zip(keys, shards))
    rows: list[dict] = []
    missing_files: list[str] = []
    for shard in sorted({s for s in shards if s}):
        try:
            rows += tar_samples(storage, join(output, shard), index_keys, policy)
        except FileNotFoundError:
            missing_files.append(shard)
    cols = ["key", "shard", "has_mp4", "has_json", "has_txt", "json_key_matches", "json_license_allowed",
            "in_index_same_shard"]
    samples = pd.DataFrame(rows, columns=cols)
    if len(samples):
        failures += _tagged("shards", gates.run_suite("shards", samples, _row_local(suite["shards"]), "key"))
    counts = Counter(samples["key"].tolist()) if len(samples) else Counter()
    dups = sorted(k for k, n in counts.items() if n > 1)
    absent = sorted(k for k in keys if k not in counts)
    if missing_files:
        absent = [f"missing shard file:{s}" for s in missing_files] + absent
    return {"rows": t.num_rows, "samples": len(samples), "shards": sorted({s for s in shards if s}),
            "failures": failures, "dups": (dups[:SHOWN], len(dups)), "absent": (absent[:SHOWN], len(absent))}


@ray.remote(num_cpus=1)
def _ledger_part_task(s3: S3Config, uri: str, policy) -> dict:
    storage = Storage(s3)
    t = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    failures = _columns_failure("ledger", t.column_names, LEDGER_SCHEMA)
    suite = gates.dataset_expectations(policy, [])
    failures += _tagged("ledger", gates.run_suite("ledger", gates._to_pandas(t), _row_local(suite["ledger"]), "item_id"))
    return {"rows": t.num_rows, "failures": failures}


def _ids(batch: pa.Table, s3: S3Config, column: str, where: dict | None) -> pa.Table:
    """``column`` (as ``item_id``) of the output-table parts in ``batch``, rows matching ``where``."""
    storage = Storage(s3)
    cols = [column, *(where or {})]
    tables = [pq.read_table(io.BytesIO(storage.read_bytes(u)), columns=cols) for u in batch["uri"].to_pylist()]
    t = pa.concat_tables(tables) if tables else pa.table({c: pa.array([], pa.string()) for c in cols})
    for col, value in (where or {}).items():
        t = t.filter(pc.equal(t[col], value))
    return pa.table({"item_id": t[column].cast(pa.string())})


def _ids_dataset(storage: Storage, uris: list[str], column: str, where: dict | None = None):
    ds = ray.data.from_items([{"uri": u} for u in uris], override_num_blocks=max(1, math.ceil(len(uris) / 8)))
    return ds.map_batches(_ids, fn_kwargs={"s3": storage.s3, "column": column, "where": where}, batch_size=8,
                          batch_format="pyarrow", num_cpus=ray_tables.IO_TASK_CPUS)


def _merge(results: list[dict]) -> list[FailedExpectation]:
    merged: dict[tuple, FailedExpectation] = {}
    counts: Counter = Counter()
    for r in results:
        for f in r["failures"]:
            key = (f["expectation"], f["kwargs"])
            if key not in merged:
                merged[key] = FailedExpectation(f["expectation"], json.loads(f["kwargs"]), [], f["detail"])
            counts[key] += f["n"]
            merged[key].rows += f["rows"][:max(0, SHOWN - len(merged[key].rows))]
    for key, f in merged.items():
        f.total = counts[key] or None
    return list(merged.values())


def _ids_failure(expectation: str, kwargs: dict, ids: tuple[list[str], int], detail: str = "") -> list[FailedExpectation]:
    if not ids[1]:
        return []
    f = FailedExpectation(expectation, kwargs, list(ids[0])[:SHOWN], detail)
    f.total = ids[1]
    return [f]


def check_dataset_at_scale(storage: Storage, output: str, policy) -> dict:
    """``gates.check_dataset`` over the partitioned outputs; raises ``GateFailed``. Returns counts."""
    index_parts = output_tables.part_uris(storage, output, output_tables.INDEX)
    ledger_parts = output_tables.part_uris(storage, output, output_tables.LEDGER)
    index_res = [_index_part_task.remote(storage.s3, output, u, policy) for u in index_parts]
    ledger_res = [_ledger_part_task.remote(storage.s3, u, policy) for u in ledger_parts]
    index_res, ledger_res = ray.get(index_res), ray.get(ledger_res)
    n_index = sum(r["rows"] for r in index_res)
    n_ledger = sum(r["rows"] for r in ledger_res)
    small = n_ledger <= policy.runtime.broadcast_join_max_ids

    def audit(out, inputs) -> tuple:
        return table_gates.audit(out, inputs, "item_id", small=small)

    failures = _merge(index_res)
    dup_keys = audit(_ids_dataset(storage, index_parts, "key"), None)[0]
    failures += _ids_failure("index: expect_column_values_to_be_unique", {"column": "key"}, dup_keys)
    sample_dups = (sorted(k for r in index_res for k in r["dups"][0])[:SHOWN], sum(r["dups"][1] for r in index_res))
    failures += _ids_failure("shards: expect_column_values_to_be_unique", {"column": "key"}, sample_dups)
    absent = (sorted(k for r in index_res for k in r["absent"][0])[:SHOWN], sum(r["absent"][1] for r in index_res))
    listed = {s for r in index_res for s in r["shards"]}
    tars = ["shards/" + u.split("/shards/", 1)[1] for u in storage.list(join(output, "shards")) if u.endswith(".tar")]
    orphans = sorted(t for t in tars if t not in listed)
    if absent[1] or orphans:
        f = FailedExpectation("shards: expect_column_distinct_values_to_equal_set", {"column": "key"},
                              ([f"missing:{k}" for k in absent[0]] + [f"unexpected shard file:{o}" for o in orphans])[:SHOWN],
                              f"{absent[1]} index key(s) without a sample, {len(orphans)} tar(s) no index row names")
        f.total = absent[1] + len(orphans)
        failures.append(f)
    failures += _merge(ledger_res)
    failures += _ids_failure("ledger: expect_column_values_to_be_unique", {"column": "item_id"},
                             audit(_ids_dataset(storage, ledger_parts, "item_id"), None)[0])
    # Conservation across the whole run: every input video has one terminal row.
    ingest = ray_tables.read_table(StageStore(storage, output), "ingest", columns=["item_id"])
    _, missing, unexpected, _ = audit(_ids_dataset(storage, ledger_parts, "item_id", {"kind": "video"}), ingest)
    failures += _set_failure("ledger: expect_column_distinct_values_to_equal_set", missing, unexpected, "input video")
    # Accepted clips in the ledger are exactly the index's keys.
    _, missing, unexpected, _ = audit(_ids_dataset(storage, ledger_parts, "item_id", {"kind": "clip", "status": "accepted"}),
                                      _ids_dataset(storage, index_parts, "key"))
    failures += _set_failure("ledger: expect_column_distinct_values_to_equal_set", missing, unexpected, "index key")
    if failures:
        raise GateFailed("dataset", failures, n_index)
    return {"clips": n_index, "samples": sum(r["samples"] for r in index_res), "shards": len(listed),
            "ledger_rows": n_ledger}


def _set_failure(expectation: str, missing: tuple, unexpected: tuple, what: str) -> list[FailedExpectation]:
    if not (missing[1] or unexpected[1]):
        return []
    f = FailedExpectation(expectation, {"column": "item_id"},
                          ([f"missing:{m}" for m in missing[0]] + [f"unexpected:{u}" for u in unexpected[0]])[:SHOWN],
                          f"{missing[1]} {what}(s) missing, {unexpected[1]} id(s) not among them")
    f.total = missing[1] + unexpected[1]
    return [f]
