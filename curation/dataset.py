"""Reading a curated OUTPUT back: its policy, run id, shards' members, and the final dataset gate."""

from __future__ import annotations

import json

from reelflow.curation import dataset_gate, gates, output_tables
from reelflow.curation.policy import Policy, policy_from_dict
from reelflow.curation.shard_samples import shard_samples
from reelflow.curation.stage_store import StageStore
from reelflow.curation.storage import Storage, join

RUN_FILE = "run.json"


class OutputError(ValueError):
    """OUTPUT is not a curated dataset, or belongs to a different policy (CLI exit code 2)."""


def write_run_info(store: StageStore, run_id: str, policy: Policy, source: str) -> None:
    info = {"run_id": run_id, "source": source, "policy": policy.model_dump(mode="json")}
    store.storage.write_bytes(join(store.output, "_stages", RUN_FILE), json.dumps(info, indent=2, sort_keys=True).encode())


def read_run_info(storage: Storage, output: str) -> dict | None:
    uri = join(output, "_stages", RUN_FILE)
    if not storage.exists(uri):
        return None
    return json.loads(storage.read_bytes(uri))


def validate_output(output: str, storage: Storage | None = None, at_scale: bool | None = None) -> dict:
    """Run the final dataset suite on OUTPUT; raises GateFailed (exit 3) or OutputError (exit 2).
    ``at_scale``: split by part over the Ray workers (``dataset_gate``); default: when the index
    and the ledger hold more than ``runtime.driver_max_rows`` rows."""
    storage = storage or Storage()
    info = read_run_info(storage, output)
    missing = [f"{n}.parquet (or {n}/)" for n in output_tables.NAMES if not output_tables.exists(storage, output, n)]
    missing += [n for n in ("dataset.json",) if not storage.exists(join(output, n))]
    if info is None or missing:
        raise OutputError(f"{output} is not a finished reelflow dataset (missing: {missing or ['_stages/run.json']})")
    policy = policy_from_dict(info["policy"], origin=f"{output}/_stages/{RUN_FILE}")
    if at_scale is None:
        at_scale = dataset_gate.more_rows_than(storage, output, policy.runtime.driver_max_rows)
    if at_scale:
        # Large outputs: the same suite, split by part over the Ray workers.
        from reelflow.curation.pipeline import ensure_ray

        ensure_ray()
        return dataset_gate.check_dataset_at_scale(storage, output, policy)
    index = output_tables.read(storage, output, output_tables.INDEX)
    ledger = output_tables.read(storage, output, output_tables.LEDGER)
    index_keys = dict(zip(index.column("key").to_pylist(), index.column("shard").to_pylist())) if index.num_rows else {}
    samples = shard_samples(storage, output, index_keys, policy)
    store = StageStore(storage, output)
    input_ids = set(store.read("ingest").column("item_id").to_pylist())
    gates.check_dataset(index, samples, ledger, input_ids, policy)
    return {"clips": index.num_rows, "samples": len(samples), "shards": samples["shard"].nunique() if len(samples) else 0,
            "ledger_rows": ledger.num_rows}
