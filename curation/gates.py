"""Data-quality gates: one Great Expectations (GX Core) suite per stage table, defined as code.

Each gate checks the persisted table of a stage: its schema, non-null ids, unique keys, value
ranges on passed rows, a reason on every rejected/failed row, and conservation (every input of
the stage is accounted for, nothing appears from nowhere). A failing gate raises ``GateFailed``,
whose message names each failed expectation and the rows (item ids) that broke it.
"""

from __future__ import annotations

import logging
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache

import pandas as pd
import pyarrow as pa

from reelflow.curation import item_rules
from reelflow.curation.records import INDEX_SCHEMA, LEDGER_SCHEMA, STAGE_SCHEMAS, STATUSES, TERMINAL_STATUSES

MAX_ROWS_SHOWN = 10
SHARD_PATH_REGEX = r"^shards/[A-Za-z0-9_\-]+/shard-[0-9]{6}\.tar$"
KEY_REGEX = r"^[A-Za-z0-9_\-]+$"  # WebDataset keys: no dots, no slashes


@dataclass
class FailedExpectation:
    expectation: str
    kwargs: dict
    rows: list[str]  # item ids (or values) that broke it (the first ones, when ``total`` is set)
    detail: str = ""
    total: int | None = None  # rows that broke it in all, when ``rows`` holds only the first ones

    def __str__(self) -> str:
        kw = {k: v for k, v in self.kwargs.items() if k not in ("value_set", "condition_parser") and v is not None}
        cond = kw.pop("row_condition", None)
        if isinstance(cond, dict):  # GX keeps the pandas filter inside a dict
            cond = cond.get("pass_through_filter") or cond
        if cond:
            kw["where"] = cond
        args = ", ".join(f"{k}={v!r}" for k, v in kw.items())
        shown = ", ".join(self.rows[:MAX_ROWS_SHOWN])
        total, n_shown = max(self.total or 0, len(self.rows)), min(len(self.rows), MAX_ROWS_SHOWN)
        more = f" (+{total - n_shown} more)" if total > n_shown else ""
        rows = f"\n      rows: {shown}{more}" if self.rows else ""
        detail = f"\n      {self.detail}" if self.detail else ""
        return f"  - {self.expectation}({args}){rows}{detail}"


class GateFailed(Exception):
    """A stage's table broke its suite: the flow stops before the next stage (CLI exit code 3)."""

    def __init__(self, gate: str, failures: list[FailedExpectation], n_rows: int):
        self.gate, self.failures, self.n_rows = gate, failures, n_rows
        lines = [f"data-quality gate '{gate}' failed: {len(failures)} expectation(s) on {n_rows} row(s)"]
        lines += [str(f) for f in failures]
        super().__init__("\n".join(lines))


@lru_cache(maxsize=1)
def _context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return ctx


def warm_up() -> None:
    """Import GX and build its context ahead of the first gate (``flows.engines`` does it while Ray
    and Prefect start): ~4.5 s that the first gate would otherwise spend."""
    _dataframe_batches()
    import great_expectations.expectations  # noqa: F401  (the expectation classes every suite uses)


def _condition(e) -> str | None:
    """The pandas filter of an expectation's row_condition (GX keeps it inside an object)."""
    cond = getattr(e, "row_condition", None)
    if cond is None or isinstance(cond, str):
        return cond or None
    return getattr(cond, "pass_through_filter", None) or str(cond)


def _validate(name: str, df: pd.DataFrame, expectations: list, id_column: str | None) -> list[FailedExpectation]:
    """Run ``expectations`` on ``df``: those that share a row condition run together on the rows it
    keeps, filtered once. (GX would filter the frame again for every metric of every conditioned
    expectation: ~200 pandas queries a stage gate, 1.2-1.9 s of each gate's time.)"""
    groups: dict[str | None, list[int]] = {}
    for i, e in enumerate(expectations):
        groups.setdefault(_condition(e), []).append(i)
    found: list[tuple[int, FailedExpectation]] = []  # (position in the suite, failure): reported in suite order
    for cond, members in groups.items():
        group = [expectations[i] if cond is None else
                 expectations[i].copy(update={"row_condition": None, "condition_parser": None}) for i in members]
        try:
            rows = df.query(cond, parser="pandas") if cond is not None and len(df) else df
        except Exception as exc:  # a condition on a missing column: each of its expectations fails
            found += [(i, FailedExpectation(e.expectation_type, _kwargs(e.configuration.kwargs, cond), [],
                                            f"could not be evaluated: {type(exc).__name__}: {exc}"))
                      for i, e in zip(members, group)]
            continue
        for f in _validate_batch(name, rows, group, id_column):
            pos = next((i for i, e in zip(members, group) if e.expectation_type == f.expectation
                        and _kwargs(e.configuration.kwargs) == f.kwargs), members[0])
            if cond is not None:
                f.kwargs["row_condition"] = cond  # the message still says which rows the rule covers
            found.append((pos, f))
    return [f for _, f in sorted(found, key=lambda pf: pf[0])]


def _kwargs(kwargs: dict, cond: str | None = None) -> dict:
    out = {k: v for k, v in kwargs.items() if k not in ("result_format", "batch_id")}
    if cond:
        out["row_condition"] = cond
    return out


_GX_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _dataframe_batches():
    """One pandas data source, asset and whole-frame batch definition for every gate of the
    process; each validation passes its own frame as a batch parameter. (A data source per gate
    made GX write its project config four times a gate, ~0.05 s each.)"""
    source = _context().data_sources.add_pandas("reelflow")
    return source.add_dataframe_asset("table").add_batch_definition_whole_dataframe("all")


def _run_gx(name: str, df: pd.DataFrame, expectations: list, fmt: dict):
    import great_expectations as gx

    # Given to the constructor, not added one by one: add_expectation compares each new
    # expectation with every one before it (pydantic dicts; ~0.07 s a gate).
    suite = gx.ExpectationSuite(name=f"reelflow.{name}", expectations=expectations)
    # The shared data source keeps one execution engine, which holds the batch being validated:
    # two threads validating at once would see each other's frame.
    with _GX_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = _dataframe_batches().get_batch(batch_parameters={"dataframe": df})
        return batch.validate(suite, result_format=fmt)


def _validate_batch(name: str, df: pd.DataFrame, expectations: list, id_column: str | None) -> list[FailedExpectation]:
    # Pass/fail first (BOOLEAN_ONLY computes no unexpected-row lists: half of a gate's GX time), then,
    # only when something failed, the suite again with every unexpected row named.
    if all(r.success for r in _run_gx(name, df, expectations, {"result_format": "BOOLEAN_ONLY"}).results):
        return []
    fmt: dict = {"result_format": "COMPLETE"}
    if id_column and id_column in df.columns:
        fmt["unexpected_index_column_names"] = [id_column]
    result = _run_gx(name, df, expectations, fmt)
    failures = []
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        rows = []
        for item in r.result.get("unexpected_index_list") or []:
            rows.append(str(item.get(id_column)) if isinstance(item, dict) and id_column else str(item))
        if not rows and r.result.get("unexpected_list"):
            rows = [str(v) for v in r.result["unexpected_list"]]
        detail = ""
        if r.exception_info and r.exception_info.get("raised_exception"):
            detail = f"could not be evaluated: {r.exception_info.get('exception_message')}"
        elif "observed_value" in r.result and r.result["observed_value"] is not None:
            detail = f"observed: {r.result['observed_value']!r}"
        failures.append(FailedExpectation(cfg.type, _kwargs(cfg.kwargs), rows, detail))
    return failures


run_suite = _validate  # public name for suites defined elsewhere (training/gates.py)


def where(cond: str) -> dict:
    """An expectation's arguments that limit it to the rows matching ``cond`` (pandas syntax)."""
    return {"row_condition": cond, "condition_parser": "pandas"}


OK_ROWS = 'status=="ok"'


# The clip tables, in pipeline order (clips .. shard); value ranges live in item_rules, which the
# stages apply to every row they pass on before the gate sees it.
CLIP_TABLES = item_rules.CLIP_TABLES
SCORE_RANGES = item_rules.SCORE_RANGES


def range_expectations(stage: str, policy) -> list:
    """The stage's per-item ranges (``item_rules``) as expectations on its passing rows."""
    import great_expectations.expectations as gxe

    out = []
    for rule in item_rules.ok_row_rules(stage, policy):
        if isinstance(rule, item_rules.OneOf):
            out.append(gxe.ExpectColumnValuesToBeInSet(column=rule.column, value_set=list(rule.values), **where(OK_ROWS)))
        else:
            out.append(gxe.ExpectColumnValuesToBeBetween(column=rule.column, min_value=rule.lo, max_value=rule.hi,
                                                         strict_min=rule.strict_lo, **where(OK_ROWS)))
    return out


def common_expectations(stage: str, expected_inputs: set[str], id_column: str, policy) -> list:
    """What every stage table must satisfy (``Stage.expectations`` adds the stage's own): its
    schema, ids, statuses, reasons, conservation of the inputs, the ranges of ``item_rules``, and
    what its family of tables holds (clip rows, encoded files)."""
    import great_expectations.expectations as gxe

    schema = STAGE_SCHEMAS[stage]
    ex = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(schema.names), exact_match=True),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("run_id", "item_id", "kind", "source_uri", "stage", "status")],
        gxe.ExpectColumnValuesToBeUnique(column="item_id"),
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=list(STATUSES)),
        gxe.ExpectColumnValuesToBeInSet(column="stage", value_set=[stage]),
        gxe.ExpectColumnValuesToNotBeNull(column="reason", **where('status!="ok"')),
        gxe.ExpectColumnValuesToMatchRegex(column="item_id", regex=KEY_REGEX),
    ]
    # Conservation: exactly the inputs that passed the previous stage, each at least once.
    if expected_inputs:
        ex.append(gxe.ExpectColumnDistinctValuesToEqualSet(column=id_column, value_set=sorted(expected_inputs)))
    else:
        ex.append(gxe.ExpectTableRowCountToEqual(value=0))
    ex += range_expectations(stage, policy)
    if stage in CLIP_TABLES:
        ex += [
            gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=["clip"]),
            gxe.ExpectColumnValuesToNotBeNull(column="parent_id"),
            gxe.ExpectColumnValuesToBeBetween(column="start_s", min_value=0),
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="end_s", column_B="start_s", or_equal=False),
        ]
    if stage in item_rules.ENCODED_TABLES:
        ex += [
            gxe.ExpectColumnValuesToNotBeNull(column="clip_uri", **where(OK_ROWS)),
        ]
    return ex


def scored_expectations(policy) -> list:
    """Scores every clip of a scored table gets (the visual scorers always run; text when its rule
    is on); the score and shard stages declare them."""
    import great_expectations.expectations as gxe

    if not policy.scoring.enabled:
        return []
    # Lazy scoring leaves flow (motion, static where the frame differences did not decide it) and
    # OCR out for clips a cheap rule already rejected: those scores are on every kept clip.
    lazy = policy.scoring.skip_models_after_reject
    judged = where('status=="ok"' if lazy else 'status!="failed"')
    needed = ["cuts_per_s", "border_fraction", "sharpness", "mean_luma"]
    ex = [gxe.ExpectColumnValuesToNotBeNull(column=c, **where('status!="failed"')) for c in needed]
    ex += [gxe.ExpectColumnValuesToNotBeNull(column=c, **judged) for c in ("motion_mean", "static")]
    if policy.scoring.text.enabled:
        ex.append(gxe.ExpectColumnValuesToNotBeNull(column="text_conf_max", **judged))
    return ex


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    # Lists (shot boundaries) are opaque to GX's pandas engine; the gate does not inspect them.
    cols = {f.name: table.column(f.name).to_pylist() if not pa.types.is_list(f.type) else
            [len(x) if x is not None else None for x in table.column(f.name).to_pylist()]
            for f in table.schema}
    return pd.DataFrame(cols) if cols else pd.DataFrame()


def check_table(stage: str, table: pa.Table, suite: list, expected_inputs: set[str], id_column: str) -> None:
    """Validate a stage's table against its ``suite`` (``Stage.expectations``); raises GateFailed
    with the failing rows."""
    failures = _validate(stage, _to_pandas(table), suite, "item_id")
    if failures and expected_inputs and id_column in table.column_names:
        # Name the ids behind a conservation failure: GX reports only that the sets differ.
        seen = {x for x in table.column(id_column).to_pylist() if x is not None}
        for f in failures:
            if f.expectation == "expect_column_distinct_values_to_equal_set":
                missing, extra = sorted(expected_inputs - seen), sorted(seen - expected_inputs)
                f.rows = [f"missing:{m}" for m in missing] + [f"unexpected:{e}" for e in extra]
    if failures:
        raise GateFailed(stage, failures, table.num_rows)


def dataset_expectations(policy, keys: list[str]) -> dict[str, list]:
    """The final dataset suite's expectations on the index, the shards' samples and the ledger
    (``keys``: the index's keys, for the shards' set equality)."""
    import great_expectations.expectations as gxe

    allowed = sorted({x.strip() for x in policy.licenses.allow} | {x.strip().lower() for x in policy.licenses.allow})
    index_ex = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(INDEX_SCHEMA.names), exact_match=True),
        gxe.ExpectColumnValuesToNotBeNull(column="key"),
        gxe.ExpectColumnValuesToBeUnique(column="key"),
        gxe.ExpectColumnValuesToMatchRegex(column="key", regex=KEY_REGEX),
        gxe.ExpectColumnValuesToBeInSet(column="license", value_set=allowed),
        gxe.ExpectColumnValuesToMatchRegex(column="shard", regex=SHARD_PATH_REGEX),
        gxe.ExpectColumnValuesToBeBetween(column="duration_s", min_value=0, strict_min=True),
        gxe.ExpectColumnValuesToBeBetween(column="sampling_weight", min_value=0, strict_min=True),
        gxe.ExpectColumnValuesToNotBeNull(column="caption"),
    ]
    shard_ex = [
        gxe.ExpectColumnValuesToBeUnique(column="key"),
        *[gxe.ExpectColumnValuesToBeInSet(column=m, value_set=[True]) for m in ("has_mp4", "has_json", "has_txt")],
        gxe.ExpectColumnValuesToBeInSet(column="json_key_matches", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="json_license_allowed", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="in_index_same_shard", value_set=[True]),
        (gxe.ExpectColumnDistinctValuesToEqualSet(column="key", value_set=keys) if keys
         else gxe.ExpectTableRowCountToEqual(value=0)),
    ]
    ledger_ex = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(LEDGER_SCHEMA.names), exact_match=True),
        gxe.ExpectColumnValuesToBeUnique(column="item_id"),
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=list(TERMINAL_STATUSES)),
        gxe.ExpectColumnValuesToNotBeNull(column="reason", **where('status!="accepted"')),
        gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=["video", "clip"]),
    ]
    return {"index": index_ex, "shards": shard_ex, "ledger": ledger_ex}


def check_dataset(index: pa.Table, samples: pd.DataFrame, ledger: pa.Table, input_ids: set[str], policy) -> None:
    """The final dataset suite (``reelflow validate``): index <-> shards, members, licences, ledger."""
    import great_expectations.expectations as gxe

    keys = sorted(set(index.column("key").to_pylist())) if index.num_rows else []
    suite = dataset_expectations(policy, keys)
    index_ex, shard_ex, ledger_ex = suite["index"], suite["shards"], suite["ledger"]
    led = _to_pandas(ledger)
    failures = []
    failures += [_tag("index", f) for f in _validate("index", _to_pandas(index), index_ex, "key")]
    failures += [_tag("shards", f) for f in _validate("shards", samples, shard_ex, "key")]
    failures += [_tag("ledger", f) for f in _validate("ledger", led, ledger_ex, "item_id")]
    # Conservation across the whole run: every input video has one terminal row.
    videos = led[led["kind"] == "video"] if len(led) else led
    failures += [_tag("ledger", f) for f in _validate(
        "ledger_videos", videos,
        [gxe.ExpectColumnDistinctValuesToEqualSet(column="item_id", value_set=sorted(input_ids))] if input_ids
        else [gxe.ExpectTableRowCountToEqual(value=0)], "item_id")]
    # Accepted clips in the ledger are exactly the index's keys.
    accepted = led[(led["kind"] == "clip") & (led["status"] == "accepted")] if len(led) else led
    failures += [_tag("ledger", f) for f in _validate(
        "ledger_accepted", accepted,
        [gxe.ExpectColumnDistinctValuesToEqualSet(column="item_id", value_set=keys)] if keys
        else [gxe.ExpectTableRowCountToEqual(value=0)], "item_id")]
    if failures:
        raise GateFailed("dataset", failures, index.num_rows)


def _tag(where: str, f: FailedExpectation) -> FailedExpectation:
    f.expectation = f"{where}: {f.expectation}"
    return f
