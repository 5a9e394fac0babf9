"""training/parallel.py without Ray: DDP, FSDP2 and HSDP (both mesh shapes), with and without
activation checkpointing, train the same losses from the same weights and batches on two gloo
processes; the schedule's `parallelism:` is validated; a run resumes at another worker count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reelflow.training.schedule import SCHEDULES_DIR, ScheduleError, schedule_from_dict

# Another reduction order (reduce-scatter against all-reduce) over 3 AdamW steps: last-bit
# differences, far below what a wrong gradient (a missing shard, a doubled sum) would give.
RTOL = 1e-4


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("parallel") / "runs.json"
    worker = Path(__file__).with_name("parallel_worker.py")
    r = subprocess.run([sys.executable, str(worker), str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", ["fsdp", "hsdp_2x1", "hsdp_1x2", "fsdp_ac_every_2", "ddp_ac_full"])
def test_every_parallelism_trains_what_ddp_trains(runs, name):
    ddp, other = runs["ddp"], runs[name]
    assert other["losses"] == pytest.approx(ddp["losses"], rel=RTOL)
    assert other["norms"] == pytest.approx(ddp["norms"], rel=RTOL)
    assert other["weights"].keys() == ddp["weights"].keys()  # gathered whole, same names
    for key, total in ddp["weights"].items():
        assert other["weights"][key] == pytest.approx(total, rel=RTOL, abs=1e-5), key
    # activation-checkpoint wrappers and sharding leave the checkpoint's names as they were
    assert other["keys_unchanged"]


def test_the_runs_learn_something(runs):
    """Guard against a comparison of nothing: the weights moved and the losses differ by step."""
    assert len(set(round(x, 6) for x in runs["ddp"]["losses"])) == len(runs["ddp"]["losses"])
    assert all(n > 0 for n in runs["ddp"]["norms"])


def _tiny(**top) -> dict:
    raw = yaml.safe_load((SCHEDULES_DIR / "tiny.yaml").read_text())
    raw.update(top)
    return raw


@pytest.mark.parametrize("parallelism, workers, message", [
    ({"strategy": "hsdp"}, 2, "hsdp needs replicate"),
    ({"strategy": "fsdp", "replicate": 2}, 2, "replicate applies to hsdp only"),
    ({"strategy": "hsdp", "replicate": 3}, 2, "does not divide num_workers"),
    ({"strategy": "fsdp", "activation_checkpointing": 0}, 2, "k >= 1"),
    ({"strategy": "zero3"}, 2, "strategy"),
])
def test_parallelism_is_validated(parallelism, workers, message):
    raw = _tiny(num_workers=workers)
    raw["stages"][1]["parallelism"] = parallelism
    with pytest.raises(ScheduleError, match=message):
        schedule_from_dict(raw)


def test_a_run_resumes_on_other_workers_but_not_with_another_recipe():
    from reelflow.flows.train_flow import _what_it_trains

    base = schedule_from_dict(_tiny()).model_dump(mode="json")
    moved = _tiny(num_workers=2, cpus_per_worker=2)
    moved["stages"][1]["parallelism"] = {"strategy": "fsdp", "activation_checkpointing": "full"}
    assert _what_it_trains(schedule_from_dict(moved).model_dump(mode="json")) == _what_it_trains(base)
    changed = _tiny()
    changed["stages"][1]["lr"] = 1.0
    assert _what_it_trains(schedule_from_dict(changed).model_dump(mode="json")) != _what_it_trains(base)
