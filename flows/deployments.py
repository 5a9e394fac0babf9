"""Prefect deployments of reelflow's flows, built from code.

Two ways to run them on a schedule, with the same names, schedules and parameters:

- ``reelflow serve`` (this module): one long-lived process registers the deployments on a Prefect
  server and runs their flow runs itself. No work pool, no worker.
- ``prefect deploy`` with the repo's ``prefect.yaml``: the deployments live on the work pool
  ``reelflow-process`` (see :data:`WORK_POOL`) and a ``prefect worker`` runs them.

Both need a real Prefect server (``PREFECT_API_URL``): Prefect's ephemeral API runs no scheduler.

Adding a flow is one entry: a config model with a ``deployment()`` method returning a
:class:`DeploymentConfig`, and one line in :func:`build_deployments`. ``curate-nightly`` runs on
a cron; ``train`` has no schedule (``cron=None``) and runs when triggered with its ``schedule``,
``shards`` and ``output``.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:  # Prefect is imported lazily: building a config must not start its machinery
    from prefect import Flow
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments.runner import RunnerDeployment

NIGHTLY_CRON = "0 2 * * *"  # 02:00 every day
DEFAULT_TIMEZONE = "UTC"
CURATE_DEPLOYMENT = "curate-nightly"
TRAIN_DEPLOYMENT = "train"


@dataclass(frozen=True)
class WorkPoolSpec:
    """The work pool that ``prefect.yaml`` deploys to: a process pool, so a worker started in a
    checkout of this repo (with its virtualenv) runs each flow run as a local subprocess.
    On AWS, Terraform's ``work_pool_name`` (an ECS pool) takes its place."""

    name: str = "reelflow-process"
    type: str = "process"
    description: str = "reelflow flows run as subprocesses of a worker started in a reelflow checkout"
    concurrency_limit: int | None = 1  # one curation at a time: runs share the machine's Ray


WORK_POOL = WorkPoolSpec()


def _check_cron(expr: str) -> str:
    from prefect.client.schemas.schedules import CronSchedule

    CronSchedule(cron=expr)  # Prefect's own validation: the server would reject what it rejects
    return expr


def check_parameters(flow: "Flow", parameters: dict[str, Any]) -> None:
    """Names and types of default parameters against the flow's schema, so a typo fails when the
    deployment is built, not at 02:00. Required ones may be missing: a run can supply them."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    schema = parameter_schema(flow).model_dump_for_openapi()
    unknown = sorted(set(parameters) - set(schema["properties"]))
    if unknown:  # the schema allows extra keys; the flow call would not
        raise ValueError(f"flow {flow.name!r} has no parameter(s) {unknown}; it takes {list(schema['properties'])}")
    validate(parameters, schema, raise_on_error=True, ignore_required=True)


class DeploymentConfig(BaseModel):
    """One deployment of one flow: name, default parameters, and a cron schedule (or none: runs
    only when triggered)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    cron: str | None = None
    timezone: str = DEFAULT_TIMEZONE
    description: str | None = None
    tags: list[str] = Field(default_factory=lambda: ["reelflow"])

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        return _check_cron(v) if v else None

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as e:
            raise ValueError(f"unknown timezone {v!r} (use an IANA name such as UTC or Europe/Paris)") from e
        return v

    def build(self, flow: "Flow") -> "RunnerDeployment":
        """The deployment of ``flow``; its parameters are checked against the flow's signature."""
        from prefect.schedules import Cron
        from prefect.types.entrypoint import EntrypointType

        check_parameters(flow, self.parameters)
        schedules = [Cron(self.cron, timezone=self.timezone)] if self.cron else None
        # A module entrypoint (reelflow.flows.curate_flow.curate) resolves from any working directory,
        # since reelflow is an installed package; a file path would depend on where serve ran.
        return flow.to_deployment(
            name=self.name,
            schedules=schedules,
            parameters=self.parameters,
            description=self.description,
            tags=self.tags,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )


class CurateSchedule(BaseModel):
    """What the nightly curation runs: the ``curate`` flow's parameters and when."""

    model_config = ConfigDict(extra="forbid")

    source: str
    output: str
    policy_path: str | None = None
    ray_address: str | None = None
    cron: str = NIGHTLY_CRON
    timezone: str = DEFAULT_TIMEZONE
    name: str = CURATE_DEPLOYMENT

    def parameters(self) -> dict[str, Any]:
        params: dict[str, Any] = {"source": self.source, "output": self.output}
        # Unset optionals stay out, so the flow's own defaults apply (and show as defaults in the UI).
        if self.policy_path:
            params["policy_path"] = self.policy_path
        if self.ray_address:
            params["ray_address"] = self.ray_address
        return params

    def deployment(self) -> DeploymentConfig:
        return DeploymentConfig(
            name=self.name,
            parameters=self.parameters(),
            cron=self.cron,
            timezone=self.timezone,
            description="Curate SOURCE into WebDataset shards under OUTPUT (resumes into the same OUTPUT).",
            tags=["reelflow", "curate"],
        )


def curate_deployment(config: CurateSchedule) -> "RunnerDeployment":
    from reelflow.flows.curate_flow import curate

    return config.deployment().build(curate)


class TrainTrigger(BaseModel):
    """The ``train`` flow on manual trigger: no schedule; a run names its ``schedule`` and
    ``shards`` (and ``output``), or takes the defaults given here."""

    model_config = ConfigDict(extra="forbid")

    schedule: str | None = None
    shards: str | None = None
    output: str | None = None
    ray_address: str | None = None
    name: str = TRAIN_DEPLOYMENT

    def parameters(self) -> dict[str, Any]:
        return {k: v for k, v in {"schedule": self.schedule, "shards": self.shards, "output": self.output,
                                  "ray_address": self.ray_address}.items() if v}

    def deployment(self) -> DeploymentConfig:
        return DeploymentConfig(
            name=self.name,
            parameters=self.parameters(),
            cron=None,  # training runs when an ML team triggers it, not on a clock
            description="Train the progressive schedule on a curated dataset (resumes into the same OUTPUT).",
            tags=["reelflow", "train"],
        )


def train_deployment(config: TrainTrigger) -> "RunnerDeployment":
    from reelflow.flows.train_flow import train

    return config.deployment().build(train)


def build_deployments(curate: CurateSchedule, train: TrainTrigger | None = None) -> list["RunnerDeployment"]:
    """Every deployment ``reelflow serve`` serves: nightly curation and on-demand training."""
    return [curate_deployment(curate), train_deployment(train or TrainTrigger())]


def trigger_now(deployment: "RunnerDeployment", parameters: dict[str, Any] | None = None) -> "FlowRun":
    """Register ``deployment`` and schedule one run of it for now; the server returns at once."""
    from prefect.deployments import run_deployment

    deployment_id = deployment.apply()
    return run_deployment(deployment_id, parameters=parameters, timeout=0, as_subflow=False)


def serve(deployments: list["RunnerDeployment"], *, run_now: str | None = None, limit: int | None = 1) -> None:
    """Register ``deployments`` on the server in ``PREFECT_API_URL`` and run their flow runs here
    until interrupted. ``run_now`` names a deployment to run once right away. ``limit`` caps
    concurrent flow runs: one by default, since runs share this machine's Ray."""
    import prefect

    if run_now is not None:
        match = [d for d in deployments if d.name == run_now]
        if not match:
            raise ValueError(f"no deployment named {run_now!r}; have {[d.name for d in deployments]}")
        # Created before serving starts: the runner picks it up on its first poll.
        trigger_now(match[0])
    prefect.serve(*deployments, limit=limit)


def ensure_work_pool(spec: WorkPoolSpec = WORK_POOL) -> bool:
    """Create the process work pool on the server unless it exists. Returns True if created."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(spec.name)
            return False  # already there: nothing to do
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=spec.name,
                    type=spec.type,
                    description=spec.description,
                    concurrency_limit=spec.concurrency_limit,
                    # The process worker's own job template (command, env, working_dir, ...).
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
            )
        return True
