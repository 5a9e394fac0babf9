"""Data-quality gates of the train flow, as GX Core suites (same machinery as curation/gates.py).

- `check_training_data`: before any stage, the curated index must carry what training reads
  (keys, shard paths, captions, sizes, fps, weights) and each stage must have enough clips.
  (The dataset suite of `reelflow validate` runs first: shards <-> index <-> ledger.)
- `check_stage_metrics`: after a stage, its metric rows must be complete and sane: every step
  logged once and in order up to `iterations`, finite non-negative losses, a positive learning
  rate, and a validation loss at the end when the schedule holds clips out.
- `check_learning`: after a stage's evaluation, the metrics its `expect:` declares (a learning
  gate: a gate on what the stage produced, not only on how training went).
"""

from __future__ import annotations

import great_expectations.expectations as gxe
import pandas as pd

from reelflow.curation.gates import KEY_REGEX, SHARD_PATH_REGEX, FailedExpectation, GateFailed, run_suite
from reelflow.training.schedule import Schedule, StageSpec

INDEX_COLUMNS = ["key", "shard", "caption", "duration_s", "fps", "width", "height", "aspect_bucket",
                 "has_audio", "sampling_weight"]


def check_training_data(index: pd.DataFrame, schedule: Schedule, eligible: dict[str, int]) -> None:
    """`eligible`: stage name -> training clips usable by that stage (from training/data.py)."""
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise GateFailed("train-data", [FailedExpectation("expect_columns_to_exist", {"columns": missing}, [])],
                         len(index))
    exps = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column="key"),
        gxe.ExpectColumnValuesToBeUnique(column="key"),
        gxe.ExpectColumnValuesToMatchRegex(column="key", regex=KEY_REGEX),
        gxe.ExpectColumnValuesToMatchRegex(column="shard", regex=SHARD_PATH_REGEX),
        gxe.ExpectColumnValuesToNotBeNull(column="caption"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="caption", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="duration_s", min_value=0, strict_min=True),
        gxe.ExpectColumnValuesToBeBetween(column="fps", min_value=0, strict_min=True),
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="sampling_weight", min_value=0, strict_min=True),
    ]
    failures = run_suite("train-data", index[INDEX_COLUMNS].copy(), exps, "key")
    # Each stage needs at least one global batch of usable training clips.
    counts = pd.DataFrame({"stage": list(eligible), "eligible": list(eligible.values()),
                           "needed": [_stage(schedule, n).global_batch_size for n in eligible]})
    counts["short"] = counts["eligible"] < counts["needed"]
    failures += run_suite("train-data-stages", counts, [gxe.ExpectColumnValuesToBeInSet(column="short", value_set=[False])],
                          "stage")
    for f in failures:
        if f.expectation == "expect_column_values_to_be_in_set" and f.rows:
            short = counts[counts["short"]]
            f.detail = "; ".join(f"{r.stage}: {r.eligible} usable clip(s), needs a batch of {r.needed}"
                                 for r in short.itertuples())
    if failures:
        raise GateFailed("train-data", failures, len(index))


def check_stage_metrics(rows: list[dict], stage: StageSpec, expect_val: bool) -> None:
    df = pd.DataFrame(rows)
    name = f"train-{stage.name}"
    if df.empty:
        raise GateFailed(name, [FailedExpectation("expect_table_row_count_to_be_between", {"min_value": 1}, [])], 0)
    train = df[df["split"] == "train"].copy()
    train["step_id"] = train["step"].astype(str)
    exps = [
        gxe.ExpectColumnValuesToBeUnique(column="step"),
        gxe.ExpectColumnValuesToBeIncreasing(column="step", strictly=True),
        gxe.ExpectColumnMaxToBeBetween(column="step", min_value=stage.iterations, max_value=stage.iterations),
        gxe.ExpectColumnValuesToNotBeNull(column="loss"),
        gxe.ExpectColumnValuesToBeBetween(column="loss", min_value=0, max_value=1e6),
        gxe.ExpectColumnValuesToBeBetween(column="lr", min_value=0, strict_min=True),
    ]
    if expect_val:
        last = train.tail(1)
        vals = [c for c in last.columns if c.startswith("val_loss")]
        if not vals or last[vals].isna().all(axis=None):
            raise GateFailed(name, [FailedExpectation("expect_column_to_exist", {"column": "val_loss_*"}, [],
                                                      "no validation loss at the end of the stage")], len(train))
        for c in vals:
            exps.append(gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=1e6,
                                                          row_condition=f'step=={stage.iterations}',
                                                          condition_parser="pandas"))
    failures = run_suite(name, train, exps, "step_id")
    if failures:
        raise GateFailed(name, failures, len(train))


def _stage(schedule: Schedule, name: str) -> StageSpec:
    return next(s for s in schedule.stages if s.name == name)


def check_learning(summary: dict, stage: StageSpec) -> None:
    """The learning gate: the stage's evaluation must reach what the stage declares in ``expect``.
    Raises GateFailed naming each metric that missed and by how much."""
    failures = []
    for metric, bound in stage.expect.items():
        value = summary.get(metric)
        if value is None:
            failures.append(FailedExpectation("expect_metric_to_be_measured", {"metric": metric}, [],
                                              "the evaluation did not measure it (no sample showed what it needs)"))
            continue
        if bound.min is not None and value < bound.min:
            failures.append(FailedExpectation("expect_metric_at_least", {"metric": metric, "min": bound.min}, [],
                                              f"measured {value:.4g}: missed by {bound.min - value:.4g}"))
        if bound.max is not None and value > bound.max:
            failures.append(FailedExpectation("expect_metric_at_most", {"metric": metric, "max": bound.max}, [],
                                              f"measured {value:.4g}: over by {value - bound.max:.4g}"))
    if failures:
        raise GateFailed(f"learn-{stage.name}", failures, 1)
