"""GX gates: each suite passes good tables and stops bad ones, naming expectation and rows."""

import pandas as pd
import pyarrow as pa
import pytest

from reelflow.curation.gates import GateFailed
from reelflow.curation.policy import Policy
from reelflow.curation.records import STAGE_SCHEMAS, to_table
from reelflow.curation.table_gates import check_stage


def probe_row(i, **kw):
    return {"run_id": "r", "item_id": f"v{i:03d}", "kind": "video", "source_uri": f"/s/{i}.mp4", "stage": "probe",
            "status": "ok", "reason": None, "src_width": 1280, "src_height": 720, "src_fps": 25.0,
            "src_duration_s": 10.0, "rotation": 0, "has_audio": True, **kw}


def table(rows):
    return to_table(rows, STAGE_SCHEMAS["probe"])


IDS = {f"v{i:03d}" for i in range(4)}


def test_good_table_passes():
    rows = [probe_row(i) for i in range(3)] + [probe_row(3, status="failed", reason="empty file (0 bytes)",
                                                         src_width=None, src_height=None)]
    check_stage("probe", table(rows), IDS, "item_id", Policy())


@pytest.mark.parametrize(
    "mutate, expectation, bad_row",
    [
        (lambda rows: rows.__setitem__(1, probe_row(1, src_width=0)), "expect_column_values_to_be_between", "v001"),
        (lambda rows: rows.__setitem__(2, probe_row(2, status="rejected")), "expect_column_values_to_not_be_null", "v002"),
        (lambda rows: rows.__setitem__(3, probe_row(3, status="done")), "expect_column_values_to_be_in_set", "v003"),
        (lambda rows: rows.append(probe_row(1)), "expect_column_values_to_be_unique", "v001"),
        (lambda rows: rows.pop(0), "expect_column_distinct_values_to_equal_set", "missing:v000"),
        (lambda rows: rows.append(probe_row(9)), "expect_column_distinct_values_to_equal_set", "unexpected:v009"),
        (lambda rows: rows.__setitem__(0, probe_row(0, item_id="bad.key")), "expect_column_values_to_match_regex", "bad.key"),
    ],
)
def test_gate_names_the_failed_expectation_and_rows(mutate, expectation, bad_row):
    rows = [probe_row(i) for i in range(4)]
    mutate(rows)
    with pytest.raises(GateFailed) as e:
        check_stage("probe", table(rows), IDS, "item_id", Policy())
    failed = {f.expectation: f for f in e.value.failures}
    assert expectation in failed, str(e.value)
    assert bad_row in failed[expectation].rows
    assert expectation in str(e.value) and bad_row in str(e.value)


def test_schema_drift_is_caught():
    t = table([probe_row(i) for i in range(4)]).append_column("surprise", pa.array([1, 2, 3, 4]))
    with pytest.raises(GateFailed, match="expect_table_columns_to_match_set"):
        check_stage("probe", t, IDS, "item_id", Policy())


def test_empty_stage_must_have_no_rows():
    check_stage("probe", table([]), set(), "item_id", Policy())
    with pytest.raises(GateFailed, match="row_count"):
        check_stage("probe", table([probe_row(0)]), set(), "item_id", Policy())


def test_a_rule_on_passing_rows_ignores_other_rows_and_says_where_it_applies():
    rows = [probe_row(i) for i in range(3)] + [probe_row(3, status="failed", reason="unreadable", src_width=0)]
    check_stage("probe", table(rows), IDS, "item_id", Policy())  # width 0 on a failed row is no violation
    rows[1] = probe_row(1, src_width=0)
    with pytest.raises(GateFailed) as e:
        check_stage("probe", table(rows), IDS, "item_id", Policy())
    (f,) = e.value.failures
    assert f.rows == ["v001"] and "where='status==\"ok\"'" in str(e.value)


def test_failures_come_in_the_suite_s_order_and_a_bad_condition_fails_its_rules():
    import great_expectations.expectations as gxe
    import pandas as pd

    from reelflow.curation.gates import run_suite

    df = pd.DataFrame({"item_id": ["a", "b", "c"], "status": ["ok", "ok", "rejected"], "x": [1, -1, -5]})
    suite = [
        gxe.ExpectColumnValuesToBeBetween(column="x", min_value=0, row_condition='status=="ok"', condition_parser="pandas"),
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=["ok"]),
        gxe.ExpectColumnValuesToNotBeNull(column="x", row_condition='nope=="ok"', condition_parser="pandas"),
        gxe.ExpectColumnValuesToBeBetween(column="x", max_value=-2, row_condition='status=="ok"', condition_parser="pandas"),
    ]
    failures = run_suite("t", df, suite, "item_id")
    assert [(f.expectation, f.rows) for f in failures] == [
        ("expect_column_values_to_be_between", ["b"]), ("expect_column_values_to_be_in_set", ["c"]),
        ("expect_column_values_to_not_be_null", []), ("expect_column_values_to_be_between", ["a", "b"])]
    assert "could not be evaluated" in failures[2].detail and "nope" in failures[2].detail


def test_gates_validating_at_once_in_two_threads_each_judge_their_own_table():
    """Every gate of a process shares one GX data source (its execution engine holds the batch
    being validated): two threads validating at once must not see each other's frame."""
    import threading

    import great_expectations.expectations as gxe

    from reelflow.curation import gates

    good, bad = pd.DataFrame({"x": list(range(2000))}), pd.DataFrame({"x": [-1] * 2000})
    suite = [gxe.ExpectColumnValuesToBeBetween(column="x", min_value=0)]
    mixed_up: list[bool] = []

    def run(df: pd.DataFrame, should_fail: bool) -> None:
        for _ in range(10):
            if bool(gates.run_suite("t", df, suite, None)) != should_fail:
                mixed_up.append(should_fail)

    threads = [threading.Thread(target=run, args=(good, False)), threading.Thread(target=run, args=(bad, True))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not mixed_up
