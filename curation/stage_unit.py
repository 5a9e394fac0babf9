"""The one Stage unit every curation step is written as (NeMo Curator's stage shape).

A stage declares what it reads and writes (``input_stage`` -> its own table ``name``, matched on
``input_id_column``), what each of its workers asks for (``resources``), how its workers set up
and tear down, and what its table must satisfy (``expectations``, the GX suite of its gate). It
knows nothing about Ray: ``pipeline.py`` is the Ray adapter, and it decides from ``shape`` and
``resources`` how a stage runs (tasks or an actor pool, in the driver or on the workers).

Shapes:

* ``source``: rows made from the run's source (ingest);
* ``item``: one input row -> output rows, independently (``stages.ItemStage``);
* ``table``: rows that depend on the whole input table (dedup, balance, shard), all or nothing.

``pipeline.PIPELINE`` lists the stages in order, and it is ``records.STAGE_ORDER``: the flow's tasks,
the gates, the ledger, the funnel and the report all follow it.
"""

from __future__ import annotations

import tempfile
from abc import ABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from reelflow.curation.storage import S3Config, Storage, join

if TYPE_CHECKING:
    from reelflow.curation.policy import Policy

Shape = Literal["source", "item", "table"]


@dataclass(frozen=True)
class StageContext:
    """Everything a stage needs on a worker; small and picklable (no clients, no media)."""

    run_id: str
    output: str
    policy: Policy
    s3: S3Config = field(default_factory=S3Config)
    cache_dir: str = field(default_factory=lambda: str(Path(tempfile.gettempdir()) / "reelflow-cache"))
    source: str | None = None  # what the run curates (the ingest stage reads it)

    @property
    def storage(self) -> Storage:
        return Storage(self.s3)

    def stage_uri(self, stage: str, *parts: str) -> str:
        return join(self.output, "_stages", stage, *parts)


@dataclass(frozen=True)
class Resources:
    """What each worker of a stage asks of Ray.

    ``loads_model``: the worker holds state that is costly to build (model weights, a GPU context),
    so the adapter runs the stage as an actor pool (``setup`` once per actor, ``actors`` of them at
    most) instead of tasks that would each set up again. A stage that takes a GPU is one too."""

    cpus: float = 1.0
    gpus: float = 0.0
    loads_model: bool = False
    actors: int | None = None  # the pool's size; None: as many as pending inputs and CPUs allow

    def __post_init__(self) -> None:
        if self.cpus < 0 or self.gpus < 0:
            raise ValueError(f"resources: cpus={self.cpus}, gpus={self.gpus}: neither may be negative")
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"resources: actors={self.actors}: at least 1 (or None)")

    @property
    def actor_pool(self) -> bool:
        return self.loads_model or self.gpus > 0


class Stage(ABC):
    """Base of every curation stage (see the module doc)."""

    name: ClassVar[str]
    shape: ClassVar[Shape]
    input_stage: ClassVar[str | None]
    # Column of this stage's output rows that names the input row they came from: conservation
    # (every ok input answered) and resume (answered inputs are skipped) match on it.
    input_id_column: ClassVar[str] = "item_id"

    def __init__(self, ctx: StageContext):
        self.ctx = ctx

    @classmethod
    def for_policy(cls, policy: Policy) -> Stage:
        """The stage under ``policy`` outside a run: its gate's suite, its resources, a unit test."""
        return cls(StageContext(run_id="", output="", policy=policy))

    @property
    def policy(self) -> Policy:
        return self.ctx.policy

    def resources(self) -> Resources:
        """Per worker; stages whose needs depend on the policy (a model, a GPU) override this."""
        return Resources()

    def setup(self) -> None:
        """Load models or open clients; called once per worker/actor before the first input."""

    def teardown(self) -> None:
        """Release what ``setup`` took; called when the worker is done with this stage."""

    def expectations(self, expected_inputs: set[str], id_column: str | None = None) -> list:
        """The GX suite of this stage's gate: the checks every stage table gets (schema, ids,
        statuses, conservation of ``expected_inputs`` on ``id_column`` (default: the stage's
        ``input_id_column``), the ranges of ``item_rules``) and this stage's own
        (``own_expectations``)."""
        from reelflow.curation import gates

        column = id_column or self.input_id_column
        return gates.common_expectations(self.name, expected_inputs, column, self.policy) + \
            self.own_expectations(expected_inputs)

    def own_expectations(self, expected_inputs: set[str]) -> list:
        """What this stage's table must satisfy beyond the common checks."""
        return []
