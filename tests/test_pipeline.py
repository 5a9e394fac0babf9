"""Stages as Ray Data operators on the session's Ray: actor pools, resume, crashed workers."""

from __future__ import annotations

import os
import sys

import pytest
import ray.cloudpickle

from reelflow.curation.pipeline import run_media_stage
from reelflow.curation.policy import policy_from_dict
from reelflow.curation.records import OK, VIDEO, video_id
from reelflow.curation.stage_store import StageStore
from reelflow.curation.stages import FilterStage, ItemStage, ProbeStage, ShotsStage, StageContext
from reelflow.curation.storage import Storage

pytestmark = pytest.mark.integration
# Workers cannot import this test module by name: ship its classes by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _ingest(store: StageStore, uris: list[str]) -> None:
    store.write_part("ingest", [
        {"run_id": "r", "item_id": video_id(u), "kind": VIDEO, "parent_id": None, "source_uri": u, "stage": "ingest",
         "status": OK, "reason": None, "license": "CC0-1.0"} for u in uris])


def _ctx(tmp_path, **policy) -> StageContext:
    base = {"video": {"min_short_side": 0, "min_duration_s": 1.0}}
    return StageContext(run_id="r", output=str(tmp_path), policy=policy_from_dict({**base, **policy}))


def test_transnetv2_runs_as_an_actor_pool(ray_session, media, tmp_path):
    ctx = _ctx(tmp_path, shots={"detector": "transnetv2"})
    store = StageStore(Storage(), str(tmp_path))
    _ingest(store, [str(media["cuts"].path)])
    run_media_stage(ProbeStage(ctx), store)
    run_media_stage(FilterStage(ctx), store)
    stage = ShotsStage(ctx)
    assert stage.resources().actor_pool  # TransNetV2's weights: an actor pool
    run = run_media_stage(stage, store, actors=1)
    assert run.processed == 1 and run.crashed == 0
    (row,) = store.read("shots").to_pylist()
    assert row["status"] == OK and row["shot_detector"] == "transnetv2"
    cuts = media["cuts"].cuts_s
    assert len(row["shot_starts"]) == len(cuts) + 1
    assert all(abs(s - c) <= 2 / 24 for s, c in zip(row["shot_starts"][1:], cuts))
    # A rerun finds nothing to do.
    assert run_media_stage(ShotsStage(ctx), store, actors=1).processed == 0


class CrashOnMarkedItem(ItemStage):
    """Kills its worker process (as a segfaulting decoder would) on inputs whose uri says so."""

    name = "probe"
    input_stage = "ingest"

    def process(self, row: dict) -> list[dict]:
        if "crash" in row["source_uri"]:
            os._exit(1)
        return [{**row, "status": OK, "reason": None}]


def test_a_crashing_worker_fails_its_item_and_the_stage_goes_on(ray_session, tmp_path):
    ctx = _ctx(tmp_path)
    store = StageStore(Storage(), str(tmp_path))
    _ingest(store, ["/data/a.mp4", "/data/crash.mp4", "/data/b.mp4"])
    run = run_media_stage(CrashOnMarkedItem(ctx), store)
    assert run.crashed == 1 and run.processed == 3
    rows = {r["source_uri"]: r for r in store.read("probe").to_pylist()}
    assert rows["/data/a.mp4"]["status"] == OK and rows["/data/b.mp4"]["status"] == OK
    assert rows["/data/crash.mp4"]["status"] == "failed" and "crashed" in rows["/data/crash.mp4"]["reason"]


class CrashOnMarkedItemInBatches(CrashOnMarkedItem):
    rows_per_task = 8  # as the probe stage: many rows share a task, and a crash kills them all


def test_a_crash_in_a_task_of_many_rows_fails_only_the_row_that_crashes(ray_session, tmp_path):
    ctx = _ctx(tmp_path, runtime={"driver_max_rows": 0})  # the tables as the workers read them
    store = StageStore(Storage(), str(tmp_path))
    uris = [f"/data/{i}.mp4" for i in range(5)] + ["/data/crash.mp4"]
    _ingest(store, uris)
    run = run_media_stage(CrashOnMarkedItemInBatches(ctx), store)
    assert run.crashed == 1 and run.processed == 6
    rows = {r["source_uri"]: r for r in store.read("probe").to_pylist()}
    assert len(rows) == 6 and all(rows[u]["status"] == OK for u in uris[:-1])
    assert rows["/data/crash.mp4"]["status"] == "failed" and "crashed" in rows["/data/crash.mp4"]["reason"]


class CrashWhilePlanningClips(ItemStage):
    """A 1:N stage (video -> clips) whose worker dies on one video."""

    name = "clips"
    input_stage = "shots"
    input_id_column = "parent_id"

    def process(self, row: dict) -> list[dict]:
        if "crash" in row["source_uri"]:
            os._exit(1)
        return [{**row, "kind": "clip", "item_id": row["item_id"] + "_s0000_c00", "parent_id": row["item_id"],
                 "start_s": 0.0, "end_s": 4.0, "duration_s": 4.0, "status": OK, "reason": None}]


def test_a_crash_in_a_one_to_many_stage_is_recorded_as_a_failed_clip(ray_session, tmp_path):
    from reelflow.curation.table_gates import check_stage

    ctx = _ctx(tmp_path)
    store = StageStore(Storage(), str(tmp_path))
    uris = ["/data/a.mp4", "/data/crash.mp4"]
    store.write_part("shots", [
        {"run_id": "r", "item_id": video_id(u), "kind": VIDEO, "parent_id": None, "source_uri": u, "stage": "shots",
         "status": OK, "reason": None, "src_width": 64, "src_height": 64, "src_fps": 24.0, "src_duration_s": 5.0,
         "rotation": 0, "shot_starts": [0.0], "shot_ends": [5.0]} for u in uris])
    run = run_media_stage(CrashWhilePlanningClips(ctx), store)
    assert run.crashed == 1
    rows = {r["parent_id"]: r for r in store.read("clips").to_pylist()}
    lost = rows[video_id("/data/crash.mp4")]
    assert lost["status"] == "failed" and lost["kind"] == "clip" and "crashed" in lost["reason"]
    # The table still satisfies its gate: every video accounted for, ids well-formed.
    check_stage("clips", store.read("clips"), {video_id(u) for u in uris}, "parent_id", ctx.policy)


class PassThrough(ItemStage):
    """A 1:1 stage that only marks its inputs ok: the table machinery without media work."""

    name = "probe"
    input_stage = "ingest"
    rows_per_task = 4

    def process(self, row: dict) -> list[dict]:
        return [{**row, "status": OK, "reason": None}]


def _answered(store: StageStore) -> list[str]:
    ids = store.read("probe").column("item_id").to_pylist()
    assert len(ids) == len(set(ids)), "a stage table holds an input twice"
    return sorted(ids)


@pytest.mark.parametrize("driver_max_rows,broadcast_join_max_ids", [(100, 0), (0, 1_000_000), (0, 0)],
                         ids=["in-driver", "workers-broadcast", "workers-hash-join"])
def test_a_resumed_stage_processes_only_what_its_table_does_not_answer(ray_session, tmp_path, monkeypatch,
                                                                     driver_max_rows, broadcast_join_max_ids):
    ctx = _ctx(tmp_path, runtime={"part_rows": 4, "broadcast_join_max_ids": broadcast_join_max_ids,
                                  "driver_max_rows": driver_max_rows})
    store = StageStore(Storage(), str(tmp_path))
    uris = [f"/data/{i}.mp4" for i in range(10)]
    _ingest(store, uris)
    # An earlier run answered three inputs; one of them failed with a transient error.
    earlier = [{**r, "stage": "probe", "status": OK} for r in store.read("ingest").to_pylist()[:3]]
    earlier[0].update(status="failed", reason="probe: throttled (transient)", retryable=True)
    store.write_part("probe", earlier)
    if not driver_max_rows:  # past driver_max_rows the driver holds counts, never a table
        monkeypatch.setattr(StageStore, "read", lambda *a, **k: pytest.fail("the driver read a whole stage table"))
    run = run_media_stage(PassThrough(ctx), store)
    monkeypatch.undo()
    assert (run.inputs, run.skipped, run.processed, run.crashed) == (10, 2, 8, 0)
    assert _answered(store) == sorted(video_id(u) for u in uris)
    assert all(r["status"] == OK for r in store.read("probe").to_pylist())
    # A rerun finds nothing to do.
    assert run_media_stage(PassThrough(ctx), store).processed == 0


def test_parts_are_named_from_the_inputs_they_answer(ray_session, tmp_path):
    """A write task that Ray retries rewrites its own part: the names depend on the inputs only."""
    names = []
    for out in (tmp_path / "a", tmp_path / "b"):
        ctx = _ctx(out, runtime={"part_rows": 64})
        store = StageStore(Storage(), str(out))
        _ingest(store, ["/data/one.mp4"])
        run_media_stage(PassThrough(ctx), store)
        names.append([p.rsplit("/", 1)[-1] for p in store.parts("probe")])
    assert names[0] == names[1] and len(names[0]) == 1


def test_a_retryable_failure_is_dropped_in_place():
    """No window in which a kept row exists twice: the part is rewritten under its own name."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        store = StageStore(Storage(), d)
        rows = [{"run_id": "r", "item_id": f"v{i}", "kind": VIDEO, "stage": "probe", "status": OK} for i in range(3)]
        rows[1].update(status="failed", reason="probe: timeout", retryable=True)
        uri = store.write_part("probe", rows, name="part-x.parquet")
        assert store.drop_retryable("probe") == 1
        assert store.parts("probe") == [uri]
        assert store.read("probe").column("item_id").to_pylist() == ["v0", "v2"]
