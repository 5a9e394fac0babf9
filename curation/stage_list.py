"""The curation pipeline: every stage, in order. The flow runs and gates them in this order, and
``records.STAGE_ORDER`` (the tables' schemas, the ledger, the funnel and the report) is the same
list by name, checked on import. Score and dedup come before extract: only the clips they keep
are encoded (judge before encode)."""

from __future__ import annotations

from reelflow.curation.policy import Policy
from reelflow.curation.records import STAGE_ORDER
from reelflow.curation.stage_unit import Stage
from reelflow.curation.stages import (
    CaptionStage,
    ClipPlanStage,
    ExtractStage,
    FilterStage,
    IngestStage,
    ProbeStage,
    ScoreStage,
    ShotsStage,
)
from reelflow.curation.table_stages import BalanceStage, DedupStage, ShardStage

PIPELINE: tuple[type[Stage], ...] = (
    IngestStage, ProbeStage, FilterStage, ShotsStage, ClipPlanStage, ScoreStage, DedupStage,
    ExtractStage, CaptionStage, BalanceStage, ShardStage,
)
if tuple(s.name for s in PIPELINE) != STAGE_ORDER:
    raise ImportError(f"stage_list.PIPELINE {[s.name for s in PIPELINE]} and records.STAGE_ORDER {STAGE_ORDER} disagree")
for _before, _stage in zip(PIPELINE, PIPELINE[1:]):
    if _stage.input_stage != _before.name:
        raise ImportError(f"stage {_stage.name!r} reads {_stage.input_stage!r}, but follows {_before.name!r}")

_BY_NAME = {s.name: s for s in PIPELINE}


def stage_class(name: str) -> type[Stage]:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no stage named {name!r}; the stages are {', '.join(STAGE_ORDER)}") from None


def make_stage(name: str, policy: Policy) -> Stage:
    """Stage ``name`` under ``policy``, outside a run (its gate's suite, its resources)."""
    return stage_class(name).for_policy(policy)


def stage_expectations(name: str, expected_inputs: set[str], id_column: str, policy: Policy) -> list:
    """The GX suite of stage ``name``'s gate, as the stage declares it (``Stage.expectations``)."""
    return make_stage(name, policy).expectations(expected_inputs, id_column)
