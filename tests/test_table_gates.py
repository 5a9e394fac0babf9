"""Per-item stage gates run where the table lies: row-local expectations per group of parts, and
uniqueness/conservation as id aggregates (a set audit, or Ray Data's groupby and hash joins).
``driver_max_rows: 0`` makes these small tables take the path of large ones."""

from __future__ import annotations

import pytest

from reelflow.curation.gates import GateFailed
from reelflow.curation.policy import policy_from_dict
from reelflow.curation.records import OK, VIDEO
from reelflow.curation.stage_store import StageStore
from reelflow.curation.storage import Storage
from reelflow.curation.table_gates import check_stage_table

pytestmark = pytest.mark.integration


def _row(i: str, stage: str, **extra) -> dict:
    return {"run_id": "r", "item_id": i, "kind": VIDEO, "source_uri": f"/data/{i}.mp4", "stage": stage,
            "status": OK, "reason": None, "license": "CC0-1.0", **extra}


PROBED = dict(src_width=64, src_height=64, src_fps=24.0, src_duration_s=5.0, rotation=0)


def _tables(tmp_path, probe_rows: list[dict]) -> StageStore:
    store = StageStore(Storage(), str(tmp_path))
    store.write_part("ingest", [_row(f"v{i}", "ingest") for i in range(6)])
    for k in range(0, len(probe_rows), 2):  # several parts, so the checks cross part boundaries
        store.write_part("probe", probe_rows[k:k + 2])
    return store


@pytest.mark.parametrize("broadcast_join_max_ids", [1_000_000, 0], ids=["set-audit", "hash-join"])
def test_a_stage_gate_names_what_broke_across_parts(ray_session, tmp_path, broadcast_join_max_ids):
    policy = policy_from_dict({"runtime": {"broadcast_join_max_ids": broadcast_join_max_ids, "driver_max_rows": 0}})
    rows = [_row(f"v{i}", "probe", **PROBED) for i in range(5)]  # v5 never answered
    rows.append(_row("v1", "probe", **{**PROBED, "src_width": -5}))  # v1 twice, once out of range
    rows.append(_row("v9", "probe", **PROBED))  # not an input of the stage
    store = _tables(tmp_path, rows)
    with pytest.raises(GateFailed) as e:
        check_stage_table("probe", store, "ingest", "item_id", policy)
    msg = str(e.value)
    assert e.value.n_rows == 7
    assert "expect_column_values_to_be_unique" in msg and "rows: v1" in msg
    assert "expect_column_values_to_be_between(column='src_width'" in msg
    assert "missing:v5" in msg and "unexpected:v9" in msg
    assert msg.index("expect_column_values_to_be_unique") < msg.index("expect_column_distinct_values_to_equal_set")


@pytest.mark.parametrize("driver_max_rows", [0, 100], ids=["workers", "in-driver"])
def test_a_clean_stage_table_passes_and_counts_its_rows(ray_session, tmp_path, driver_max_rows):
    policy = policy_from_dict({"runtime": {"driver_max_rows": driver_max_rows}})
    store = _tables(tmp_path, [_row(f"v{i}", "probe", **PROBED) for i in range(6)])
    assert check_stage_table("probe", store, "ingest", "item_id", policy) == 6
    assert check_stage_table("ingest", store, None, "item_id", policy) == 6


def test_a_failure_shows_its_first_ids_and_counts_the_rest(ray_session, tmp_path):
    policy = policy_from_dict({"runtime": {"part_rows": 2, "driver_max_rows": 0}})
    store = _tables(tmp_path, [_row(f"v{i}", "probe", **{**PROBED, "src_fps": 0.5}) for i in range(6)])
    with pytest.raises(GateFailed) as e:
        check_stage_table("probe", store, "ingest", "item_id", policy)
    fps = next(f for f in e.value.failures if f.kwargs.get("column") == "src_fps")
    assert sorted(fps.rows) == [f"v{i}" for i in range(6)] and fps.total == 6
