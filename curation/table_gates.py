"""A per-item stage's gate run where its table lies: the driver gets failures and counts only.

The stage's suite (``stage_list.stage_expectations``: what the stage declares) splits in two:
- row-local expectations (schema, not-null, sets, regexes, ranges): the same GX suite runs on
  each group of parts in a Ray task (``ROWS_PER_GATE_TASK`` rows a validation), and the failures
  are merged, each naming its first ids;
- table-wide ones (``item_id`` unique; conservation: the table answers exactly the ok inputs of its
  input stage, each at least once; no rows when there are no inputs): id aggregates. Up to
  ``runtime.broadcast_join_max_ids`` ids, one task audits both id columns as sets; beyond it,
  Ray Data's groupby and hash joins do, and no process holds all the ids.

- column means the suite bounds (balance's weights: mean 1), from per-part sums and counts;
- references (dedup's ``duplicate_of`` names one of the stage's own ok inputs): the distinct
  values anti-joined with the input ids, as the id audits are.

The message and exit code are those of ``check_stage``, which checks a small table whole.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import ray

from reelflow.curation import gates, ray_tables
from reelflow.curation.gates import FailedExpectation, GateFailed
from reelflow.curation.records import OK
from reelflow.curation.stage_list import stage_expectations
from reelflow.curation.stage_store import StageStore

ROWS_PER_GATE_TASK = 16384  # GX costs ~0.1 s a validation: fewer, larger batches
SHOWN_IDS = 1000  # ids a failure keeps (its message shows the first ones and counts the rest)
TABLE_WIDE = ("expect_column_values_to_be_unique", "expect_column_distinct_values_to_equal_set",
              "expect_table_row_count_to_equal")


REFERENCES = {"dedup": "duplicate_of"}  # column whose values must be ids of the stage's ok inputs


def _is_reference(e, stage: str) -> bool:
    return (e.expectation_type == "expect_column_values_to_be_in_set"
            and e.configuration.kwargs.get("column") == REFERENCES.get(stage))


def check_stage(stage: str, table: pa.Table, expected_inputs: set[str], id_column: str, policy) -> None:
    """Validate ``stage``'s table, whole, in this process against the suite the stage declares;
    raises ``GateFailed`` with the failing rows."""
    gates.check_table(stage, table, stage_expectations(stage, expected_inputs, id_column, policy), expected_inputs,
                      id_column)


def row_expectations(stage: str, policy) -> list:
    """The stage's suite without its table-wide expectations (and its references, a join): what
    holds part by part."""
    return [e for e in stage_expectations(stage, set(), "item_id", policy)
            if e.expectation_type not in TABLE_WIDE and not _is_reference(e, stage)]


def check_stage_table(stage: str, store: StageStore, input_stage: str | None, id_column: str, policy) -> int:
    """Gate ``stage``'s table against its suite; raises ``GateFailed``. Returns its row count.
    ``input_stage`` None (ingest): the table defines the inputs, only uniqueness is checked.
    Small tables (``ray_tables.small_tables``) are checked whole in this process."""
    if ray_tables.small_tables(store, [stage] + ([input_stage] if input_stage else []), policy.runtime.driver_max_rows):
        table = store.read(stage)
        inputs = store.read(input_stage or stage)
        expected = {i for i, s in zip(inputs["item_id"].to_pylist(), inputs["status"].to_pylist())
                    if input_stage is None or s == OK}
        check_stage(stage, table, expected, id_column, policy)
        return table.num_rows
    parts = store.parts(stage)
    failures, n_rows = _row_failures(stage, store, parts, policy) if parts else ([], 0)
    failures += _table_failures(stage, store, input_stage, id_column, policy, n_rows)
    if failures:
        order = {e.expectation_type: i for i, e in enumerate(stage_expectations(stage, set(), id_column, policy))}
        failures.sort(key=lambda f: order.get(f.expectation, len(order)))
        raise GateFailed(stage, failures, n_rows)
    return n_rows


# -- row-local -----------------------------------------------------------------------------------
def _row_failures(stage: str, store: StageStore, parts: list[str], policy) -> tuple[list[FailedExpectation], int]:
    part_rows = max(1, policy.runtime.part_rows)
    per_task = max(1, ROWS_PER_GATE_TASK // part_rows)
    n_tasks = math.ceil(len(parts) / per_task)
    ds = ray.data.from_items([{"uri": u} for u in parts], override_num_blocks=n_tasks)
    # GX loads in each worker once (~4 s): as many gate tasks at a time as there are CPUs.
    cpus = max(1, min(n_tasks, int(ray.available_resources().get("CPU", 1))))
    ds = ds.map_batches(_validate_parts, fn_kwargs={"table": ray_tables.TableRef(store.output, store.storage.s3),
                                                    "stage": stage, "policy": policy},
                        batch_size=per_task, batch_format="pyarrow", num_cpus=1, concurrency=cpus)
    merged: dict[tuple, FailedExpectation] = {}
    counts: Counter = Counter()
    n_rows = 0
    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for r in block.to_pylist():
            n_rows += r["rows"]
            for f in r["failures"]:
                key = (f["expectation"], f["kwargs"])
                if key not in merged:
                    merged[key] = FailedExpectation(f["expectation"], json.loads(f["kwargs"]), [], f["detail"])
                counts[key] += f["n"]
                room = SHOWN_IDS - len(merged[key].rows)
                merged[key].rows += f["rows"][:max(0, room)]
    for key, f in merged.items():
        f.total = counts[key] or None
    return list(merged.values()), n_rows


def _validate_parts(batch: pa.Table, table, stage: str, policy) -> pa.Table:
    store = table.store()
    tables = [store.read_part(stage, uri) for uri in batch["uri"].to_pylist()]
    t = pa.concat_tables(tables, promote_options="permissive")
    found = gates.run_suite(stage, gates._to_pandas(t), row_expectations(stage, policy), "item_id")
    out = [{"expectation": f.expectation, "kwargs": json.dumps(f.kwargs, sort_keys=True, default=str),
            "rows": f.rows[:SHOWN_IDS], "n": len(f.rows), "detail": f.detail} for f in found]
    return pa.table({"rows": [t.num_rows], "failures": [out]},
                    schema=pa.schema([("rows", pa.int64()), ("failures", pa.list_(pa.struct([
                        ("expectation", pa.string()), ("kwargs", pa.string()), ("rows", pa.list_(pa.string())),
                        ("n", pa.int64()), ("detail", pa.string())])))]))


# -- table-wide ----------------------------------------------------------------------------------
def _table_failures(stage: str, store: StageStore, input_stage: str | None, id_column: str, policy,
                    n_rows: int) -> list[FailedExpectation]:
    out = ray_tables.read_table(store, stage, columns=sorted({"item_id", id_column}))
    inputs = None if input_stage is None else ray_tables.read_table(store, input_stage, columns=["item_id"], ok_only=True)
    broadcast = n_rows <= policy.runtime.broadcast_join_max_ids
    audit = _audit_small if broadcast else _audit_large
    dups, missing, unexpected, n_inputs = audit(out, inputs, id_column)
    failures = []
    if dups[1]:
        failures.append(_failure("expect_column_values_to_be_unique", {"column": "item_id"}, *dups))
    if input_stage is not None and n_inputs == 0 and n_rows:
        failures.append(FailedExpectation("expect_table_row_count_to_equal", {"value": 0}, [],
                                          f"observed: {n_rows}"))
    elif missing[1] or unexpected[1]:
        f = _failure("expect_column_distinct_values_to_equal_set", {"column": id_column},
                     [f"missing:{m}" for m in missing[0]] + [f"unexpected:{u}" for u in unexpected[0]],
                     missing[1] + unexpected[1])
        f.detail = f"{missing[1]} input(s) missing, {unexpected[1]} id(s) not among the inputs"
        failures.append(f)
    if n_inputs:
        failures += _mean_failures(stage, store, policy)
    if stage in REFERENCES and inputs is not None:
        failures += _reference_failures(stage, store, inputs, broadcast)
    return failures


def _reference_failures(stage: str, store: StageStore, inputs, small: bool) -> list[FailedExpectation]:
    """Values of ``REFERENCES[stage]`` that name no ok input (dedup: a duplicate of an unknown clip)."""
    column = REFERENCES[stage]
    refs = ray_tables.read_table(store, stage, columns=[column])
    if refs is None:
        return []
    refs = refs.map_batches(_distinct_non_null, fn_kwargs={"column": column}, batch_format="pyarrow").materialize()
    if small:
        unknown = ray.get(_unknown_task.remote(list(refs.to_arrow_refs()),
                                               list(inputs.materialize().to_arrow_refs())))
    else:
        n = max(2, math.ceil(refs.count() / 1_000_000))
        distinct = refs.groupby("id").count().select_columns(["id"])  # a value named from many parts counts once
        unknown = _first_and_count(distinct.join(inputs.select_columns(["item_id"]), "left_anti", num_partitions=n,
                                                 on=("id",), right_on=("item_id",)), "id")
    if not unknown[1]:
        return []
    f = _failure("expect_column_values_to_be_in_set", {"column": column}, unknown[0], unknown[1])
    f.detail = f"{unknown[1]} value(s) name no ok input of the stage"
    return [f]


@ray.remote(num_cpus=ray_tables.IO_TASK_CPUS)
def _unknown_task(ref_refs: list, in_refs: list) -> Ids:
    named = {x for t in ray.get(ref_refs) for x in t["id"].to_pylist()}
    known = {x for t in ray.get(in_refs) for x in t["item_id"].to_pylist()}
    unknown = sorted(named - known)
    return unknown[:SHOWN_IDS], len(unknown)


def _mean_failures(stage: str, store: StageStore, policy) -> list[FailedExpectation]:
    """Column means the suite bounds (balance: the weights' mean is 1), from per-part sums."""
    out = []
    for e in stage_expectations(stage, {"-"}, "item_id", policy):
        if e.expectation_type != "expect_column_mean_to_be_between":
            continue
        kw = e.configuration.kwargs
        ds = ray_tables.read_table(store, stage, columns=[kw["column"]])
        total = count = 0.0
        for b in ds.map_batches(_sum_count, fn_kwargs={"column": kw["column"]}, batch_format="pyarrow",
                                batch_size=None).iter_batches(batch_size=None, batch_format="pyarrow"):
            total += pc.sum(b["sum"]).as_py() or 0.0
            count += pc.sum(b["count"]).as_py() or 0
        mean = total / count if count else float("nan")
        lo, hi = kw.get("min_value"), kw.get("max_value")
        if not count or (lo is not None and mean < lo) or (hi is not None and mean > hi):
            out.append(FailedExpectation(e.expectation_type, {k: kw.get(k) for k in ("column", "min_value", "max_value")},
                                         [], f"observed mean: {mean:.6g} over {int(count)} row(s)"))
    return out


def _sum_count(batch: pa.Table, column: str) -> pa.Table:
    return pa.table({"sum": [pc.sum(batch[column]).as_py() or 0.0], "count": [batch[column].length() - batch[column].null_count]})


def audit(out, inputs, id_column: str, small: bool) -> tuple["Ids", "Ids", "Ids", int]:
    """(duplicate ``item_id``s of ``out``, inputs ``out`` misses, ids of ``out`` not among the
    inputs, input count) over two Datasets: in one task when ``small``, else by hash joins."""
    return (_audit_small if small else _audit_large)(out, inputs, id_column)


def _failure(expectation: str, kwargs: dict, rows: list[str], total: int) -> FailedExpectation:
    f = FailedExpectation(expectation, kwargs, list(rows)[:SHOWN_IDS])
    f.total = total
    return f


Ids = tuple[list[str], int]  # (first ids, how many in all)


def _audit_small(out, inputs, id_column: str) -> tuple[Ids, Ids, Ids, int]:
    """Every id of both tables in one task (they fit ``broadcast_join_max_ids``)."""
    out_refs = list(out.materialize().to_arrow_refs()) if out is not None else []
    in_refs = list(inputs.materialize().to_arrow_refs()) if inputs is not None else None
    return ray.get(_audit_task.remote(out_refs, in_refs, id_column))


@ray.remote(num_cpus=ray_tables.IO_TASK_CPUS)
def _audit_task(out_refs: list, in_refs: list | None, id_column: str) -> tuple[Ids, Ids, Ids, int]:
    counts: Counter = Counter()
    answered: set[str] = set()
    for t in ray.get(out_refs):
        counts.update(t["item_id"].to_pylist())
        answered.update(x for x in t[id_column].to_pylist() if x is not None)
    dups = sorted(i for i, n in counts.items() if n > 1)
    if in_refs is None:
        return (dups[:SHOWN_IDS], len(dups)), ([], 0), ([], 0), 0
    expected: set[str] = set()
    for t in ray.get(in_refs):
        expected.update(t["item_id"].to_pylist())
    missing, unexpected = sorted(expected - answered), sorted(answered - expected)
    return ((dups[:SHOWN_IDS], len(dups)), (missing[:SHOWN_IDS], len(missing)),
            (unexpected[:SHOWN_IDS], len(unexpected)), len(expected))


def _audit_large(out, inputs, id_column: str) -> tuple[Ids, Ids, Ids, int]:
    """Ray Data's groupby and hash joins: no process holds all the ids. Each dataset is
    materialised once (in the object store), so its count and first rows cost one execution."""
    inputs = inputs.materialize() if inputs is not None else None
    n_inputs = inputs.count() if inputs is not None else 0
    if out is None:
        return ([], 0), ([], 0), ([], 0), n_inputs
    out = out.materialize()
    n = max(2, math.ceil(out.count() / 1_000_000))
    dups = _first_and_count(out.groupby("item_id").count().map_batches(_repeated, batch_format="pyarrow"), "item_id")
    if inputs is None:
        return dups, ([], 0), ([], 0), 0
    answered = out.select_columns([id_column]).map_batches(_distinct_non_null, fn_kwargs={"column": id_column},
                                                           batch_format="pyarrow").materialize()
    missing = _first_and_count(inputs.select_columns(["item_id"]).join(
        answered, "left_anti", num_partitions=n, on=("item_id",), right_on=("id",)), "item_id")
    unexpected = _first_and_count(answered.join(
        inputs.select_columns(["item_id"]), "left_anti", num_partitions=n, on=("id",), right_on=("item_id",)), "id")
    return dups, missing, unexpected, n_inputs


def _first_and_count(ds, column: str) -> Ids:
    ds = ds.materialize()
    return sorted(r[column] for r in ds.take(SHOWN_IDS)), ds.count()


def _repeated(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.greater(batch["count()"], 1))


def _distinct_non_null(batch: pa.Table, column: str) -> pa.Table:
    return pa.table({"id": pc.unique(pc.drop_null(batch[column])).cast(pa.string())})
