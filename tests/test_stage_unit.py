"""The one Stage unit: a pipeline list the flow follows, declared resources the Ray adapter turns
into tasks or actor pools, and expectations each stage declares for its gate."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import pytest
import ray.cloudpickle

from reelflow.curation import gates, pipeline
from reelflow.curation.policy import Policy, policy_from_dict
from reelflow.curation.records import OK, STAGE_ORDER, VIDEO, video_id
from reelflow.curation.stage_list import PIPELINE, make_stage, stage_class, stage_expectations
from reelflow.curation.stage_store import StageStore
from reelflow.curation.stage_unit import Resources, Stage
from reelflow.curation.stages import CaptionStage, IngestStage, ItemStage, ScoreStage, ShotsStage, StageContext
from reelflow.curation.storage import Storage
from reelflow.curation.table_stages import DedupStage, ShardStage, TableStage

# Workers cannot import this test module by name: ship its classes by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_the_pipeline_is_the_stage_order_and_each_stage_reads_the_one_before():
    assert tuple(s.name for s in PIPELINE) == STAGE_ORDER
    assert PIPELINE[0] is IngestStage and PIPELINE[0].input_stage is None
    assert PIPELINE[-1] is ShardStage
    for before, stage in zip(PIPELINE, PIPELINE[1:]):
        assert stage.input_stage == before.name
    assert {s.shape for s in PIPELINE} == {"source", "item", "table"}
    assert all(issubclass(s, Stage) for s in PIPELINE)
    assert [s.name for s in PIPELINE if issubclass(s, TableStage)] == ["dedup", "balance"]
    with pytest.raises(KeyError, match="no stage named 'transcode'; the stages are ingest, probe"):
        stage_class("transcode")


def test_resources_decide_tasks_or_an_actor_pool():
    default = Policy()
    assert not make_stage("probe", default).resources().actor_pool
    assert make_stage("filter", default).resources() == Resources(cpus=0.25)
    # A model to load (or a GPU) makes an actor pool; the adapter reads nothing else.
    assert not ShotsStage.for_policy(default).resources().actor_pool  # the adaptive detector: no model
    assert ShotsStage.for_policy(policy_from_dict({"shots": {"detector": "transnetv2"}})).resources().actor_pool
    score = ScoreStage.for_policy(policy_from_dict({"scoring": {"actors": 3, "num_gpus": 0.5}})).resources()
    assert (score.actor_pool, score.actors, score.gpus) == (True, 3, 0.5)
    assert not ScoreStage.for_policy(policy_from_dict({"scoring": {"enabled": False}})).resources().actor_pool
    assert CaptionStage.for_policy(default).resources().loads_model
    assert Resources(gpus=1).actor_pool and not Resources().actor_pool
    with pytest.raises(ValueError, match="cpus=-1"):
        Resources(cpus=-1)
    with pytest.raises(ValueError, match="actors=0"):
        Resources(actors=0)


def test_each_gate_suite_is_what_its_stage_declares():
    policy = Policy()
    for name in STAGE_ORDER:
        stage = make_stage(name, policy)
        suite = stage_expectations(name, {"a"}, stage.input_id_column, policy)
        assert [e.configuration for e in suite] == [e.configuration for e in stage.expectations({"a"})]
        common = gates.common_expectations(name, {"a"}, stage.input_id_column, policy)
        assert len(suite) == len(common) + len(stage.own_expectations({"a"}))
    # The stage's own checks: dedup's references to kept clips, the video rows of ingest.
    own = {e.configuration.kwargs.get("column") for e in DedupStage.for_policy(policy).own_expectations({"a"})}
    assert own == {"duplicate_of", "dedup_level", "status"}
    assert [e.configuration.kwargs["value_set"] for e in IngestStage.for_policy(policy).own_expectations(set())] == [["video"]]


class _Recorder(ItemStage):
    """A 1:1 stage that records each setup and teardown as a file (workers are other processes)."""

    name = "probe"
    input_stage = "ingest"
    rows_per_task = 2
    model = False

    def resources(self) -> Resources:
        return Resources(cpus=0.5, loads_model=self.model, actors=1 if self.model else None)

    def _mark(self, what: str) -> None:
        folder = Path(self.ctx.output) / "marks"
        folder.mkdir(exist_ok=True)
        (folder / f"{what}-{uuid.uuid4().hex}").touch()

    def setup(self) -> None:
        self._mark("setup")

    def teardown(self) -> None:
        self._mark("teardown")

    def process(self, row: dict) -> list[dict]:
        return [{**row, "status": OK, "reason": None}]


class _ModelRecorder(_Recorder):
    model = True


def _marks(out: Path, what: str) -> int:
    return len(list((out / "marks").glob(f"{what}-*")))


@pytest.mark.integration
@pytest.mark.parametrize("cls,setups", [(_Recorder, 3), (_ModelRecorder, 1)], ids=["tasks", "actor-pool"])
def test_the_adapter_sets_a_task_stage_up_per_task_and_a_model_stage_once_per_actor(ray_session, tmp_path, cls, setups):
    out = tmp_path / cls.__name__
    ctx = StageContext(run_id="r", output=str(out), policy=policy_from_dict({"runtime": {"part_rows": 64}}))
    store = StageStore(Storage(), str(out))
    uris = [f"/data/{i}.mp4" for i in range(6)]
    store.write_part("ingest", [
        {"run_id": "r", "item_id": video_id(u), "kind": VIDEO, "parent_id": None, "source_uri": u, "stage": "ingest",
         "status": OK, "reason": None, "license": "CC0-1.0"} for u in uris])
    run = pipeline.run_stage(cls(ctx), ctx, store)
    assert (run.inputs, run.processed) == (6, 6)
    assert _marks(out, "setup") == setups  # 6 rows, 2 a task: 3 tasks; one actor for the model stage
    if cls is _Recorder:
        assert _marks(out, "teardown") == 3
    else:
        # Ray Data ends a finished pool gracefully (MapWorker.__ray_shutdown__ drops the UDF, whose
        # __del__ tears the stage down); the actor process exits shortly after the stage returns.
        deadline = time.monotonic() + 15
        while _marks(out, "teardown") < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _marks(out, "teardown") == 1


@pytest.mark.integration
def test_run_stage_takes_a_name_and_ingests_the_run_source(ray_session, tmp_path, media):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"uri,license\n{media['cuts'].path},CC-BY-4.0\n")
    out = tmp_path / "out"
    ctx = StageContext(run_id="r", output=str(out), policy=Policy(), source=str(manifest))
    store = StageStore(Storage(), str(out))
    run = pipeline.run_stage("ingest", ctx, store)
    assert (run.inputs, run.processed) == (1, 1)
    assert store.read("ingest").column("status").to_pylist() == [OK]
    assert pipeline.run_stage("ingest", ctx, store).note == "resuming with the inputs already listed"
    with pytest.raises(ValueError, match="no source"):
        pipeline.run_stage("ingest", StageContext(run_id="r", output=str(tmp_path / "x"), policy=Policy()), store)
