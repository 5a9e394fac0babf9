"""Every range a gate enforces on passing rows is first a stage rule (issue #11, item 2).

The test walks the real GX suites of every stage table. For each range or value-set expectation
on ``ok`` rows it makes a row that breaks it, runs it through the stage that first writes that
column (``ItemStage.run_row``, the code every Ray worker runs), and checks that the item comes out
``rejected`` with a reason naming the value, and that the stage's gate then passes: one odd file
ends in the ledger instead of stopping the run. As a control, the same rows left ``ok`` fail the
gate, so each case really is a violation.
"""

from __future__ import annotations

import math

import pytest

from reelflow.curation import gates
from reelflow.curation.policy import demo_policy
from reelflow.curation.records import STAGE_SCHEMAS, to_table
from reelflow.curation.stage_list import PIPELINE, stage_expectations
from reelflow.curation.stages import ItemStage, StageContext
from reelflow.curation.table_gates import check_stage

POLICY = demo_policy()
# Stage tables in pipeline order, and the id column conservation checks for each.
TABLES = [s.name for s in PIPELINE[1:]]  # every table after ingest
ID_COLUMN = {s.name: s.input_id_column for s in PIPELINE}
VIDEO_ID, CLIP_ID = "v0123456789abcdef", "v0123456789abcdef_s0000_c00"


def _baseline(stage: str) -> dict:
    """A row of ``stage``'s table that passes its whole suite."""
    clip = stage in gates.CLIP_TABLES
    row = {
        "run_id": "r", "item_id": CLIP_ID if clip else VIDEO_ID, "kind": "clip" if clip else "video",
        "parent_id": VIDEO_ID if clip else None, "source_uri": "/data/a.mp4", "stage": stage, "status": "ok",
        "reason": None, "license": "CC0-1.0", "source_id": VIDEO_ID, "size_bytes": 1000, "container": "mov",
        "video_codec": "h264", "src_width": 640, "src_height": 360, "rotation": 0, "src_fps": 24.0,
        "src_duration_s": 10.0, "has_audio": False, "shot_detector": "adaptive", "shot_starts": [0.0],
        "shot_ends": [10.0], "shot_index": 0, "clip_index": 0, "start_s": 0.0, "end_s": 2.0, "duration_s": 2.0,
        "clip_uri": "/out/a.mp4", "width": 256, "height": 144, "fps": 24.0, "frames": 48, "clip_bytes": 1000,
        "content_signature": "abc", "phashes": [1, 2], "camera_motion": "static", "camera_confidence": 0.9,
        "caption": "FPS-24 A clip.", "caption_embedding": [0.1, 0.2], "cluster_id": 0, "cluster_size": 1,
        "sampling_weight": 1.0, "aspect_bucket": "16x9", "duration_bucket": "d0", "bucket": "16x9_d0",
        "shard": "shards/16x9_d0/shard-000000.tar",
    }
    for col, (lo, hi) in gates.SCORE_RANGES.items():
        row[col] = (lo + hi) / 2 if hi - lo <= 1 else lo + 0.5
    return row


def _violating(exp) -> object:
    kw = exp.configuration.kwargs
    if exp.expectation_type == "expect_column_values_to_be_in_set":
        values = kw["value_set"]
        return 45 if all(isinstance(v, (int, float)) for v in values) else "not-a-label"
    lo, hi = kw.get("min_value"), kw.get("max_value")
    if hi is not None:
        return hi * 2 + 1 if hi > 0 else hi + 1
    return lo - 1 if not kw.get("strict_min") else lo


def _ok_row_ranges() -> list[tuple[str, str, object]]:
    """(table, column, expectation) for each range / value set a gate checks on passing rows."""
    out = []
    for table in TABLES:
        if table == "ingest":
            continue
        expected = {VIDEO_ID} if ID_COLUMN.get(table, "item_id") == "parent_id" or table in ("probe", "filter", "shots") else {CLIP_ID}
        for exp in stage_expectations(table, expected, ID_COLUMN.get(table, "item_id"), POLICY):
            kw = exp.configuration.kwargs
            cond = kw.get("row_condition")
            on_ok_rows = isinstance(cond, dict) and cond.get("pass_through_filter") == gates.OK_ROWS
            if exp.expectation_type in ("expect_column_values_to_be_between", "expect_column_values_to_be_in_set") \
                    and on_ok_rows:
                out.append((table, kw["column"], exp))
    # The same range on a column is checked again in every later table; its producer judges it
    # once, so one case per distinct range (the first table that checks it).
    unique: dict[tuple, tuple] = {}
    for table, column, exp in out:
        kw = exp.configuration.kwargs
        sig = (column, exp.expectation_type, kw.get("min_value"), kw.get("max_value"), str(kw.get("value_set")))
        unique.setdefault(sig, (table, column, exp))
    return list(unique.values())


def _producer(column: str) -> str:
    """The first stage whose table has ``column``: the stage that must judge it."""
    return next(t for t in TABLES if column in STAGE_SCHEMAS[t].names)


class PassThrough(ItemStage):
    """The producing stage with ``process`` replaced by 'pass the row on': what is left is exactly
    the per-item guard that every stage's ``run_row`` applies."""

    input_stage = "ingest"

    def process(self, row: dict) -> list[dict]:
        return [row]


CASES = _ok_row_ranges()


def test_the_walk_finds_the_ranges_that_stopped_runs():
    columns = {c for _, c, _ in CASES}
    assert {"src_fps", "src_width", "src_height", "src_duration_s", "rotation", "duration_s", "fps",
            "motion_mean", "camera_confidence"} <= columns
    assert {t for t, _, _ in CASES} >= {"probe", "clips", "extract", "score"}


def _stage(producer: str, tmp_path) -> ItemStage:
    cls = type(f"{producer}Stage", (PassThrough,), {"name": producer})
    return cls(StageContext(run_id="r", output=str(tmp_path), policy=POLICY))


@pytest.mark.parametrize("table, column, exp", CASES, ids=[f"{t}.{c}.{e.expectation_type[20:]}" for t, c, e in CASES])
def test_a_value_the_gate_forbids_is_rejected_by_a_stage_first(table, column, exp, tmp_path):
    producer = _producer(column)
    bad = _violating(exp)
    row = {**_baseline(producer), column: bad}
    (out,) = _stage(producer, tmp_path).run_row(row)
    assert out["status"] == "rejected", f"{producer} passed {column}={bad!r} on to the gate"
    assert out["reason"].startswith(f"{producer}: ") and "=" in out["reason"]


@pytest.mark.parametrize("producer", sorted({_producer(c) for _, c, _ in CASES}))
def test_the_gate_stops_such_rows_when_ok_and_passes_them_rejected(producer, tmp_path):
    """One table per producing stage with a row per case: left ok, each row breaks its gate (the
    control: the values really are violations); after the stage's guard the gate passes."""
    cases = [(c, e) for _, c, e in CASES if _producer(c) == producer]
    base = _baseline(producer)
    rows = []
    for i, (column, exp) in enumerate(cases):
        ids = {"item_id": f"{base['item_id']}{i:03d}"} if "parent_id" not in ID_COLUMN.get(producer, "") else \
            {"item_id": f"{CLIP_ID}{i:03d}", "parent_id": f"{VIDEO_ID}{i:03d}"}
        rows.append({**base, **ids, column: _violating(exp)})
    id_col = ID_COLUMN.get(producer, "item_id")
    expected = {r[id_col] for r in rows}
    with pytest.raises(gates.GateFailed) as stopped:
        check_stage(producer, to_table(rows, STAGE_SCHEMAS[producer]), expected, id_col, POLICY)
    failed = {(f.kwargs.get("column"), r) for f in stopped.value.failures for r in f.rows}
    for row, (column, _) in zip(rows, cases):
        assert (column, row["item_id"]) in failed, f"the gate let {column}={row[column]!r} pass"
    stage = _stage(producer, tmp_path)
    judged = [out for row in rows for out in stage.run_row(row)]
    assert all(r["status"] == "rejected" for r in judged)
    check_stage(producer, to_table(judged, STAGE_SCHEMAS[producer]), expected, id_col, POLICY)


def test_reasons_name_the_value_and_the_range():
    stage = _stage("probe", "/tmp/reelflow-test")
    (out,) = stage.run_row({**_baseline("probe"), "src_fps": 2000.0})
    assert out["reason"] == "probe: fps=2000 outside 1–240"
    (out,) = stage.run_row({**_baseline("probe"), "rotation": 45})
    assert out["reason"] == "probe: rotation=45 not one of 0, 90, 180, 270"
    (out,) = stage.run_row({**_baseline("probe"), "src_fps": math.nan})
    assert out["status"] == "ok"  # not computed is not judged here
