"""Seconds per stage gate (GX suite) on a curated output: reelflow's validation (expectations that
share a row condition run together on the rows it keeps, filtered once) against the baseline of
the same suite handed to GX whole (GX filters the frame again for every metric of every
conditioned expectation), measured in the same process on the same tables, best of ``--repeat``.

    .venv/bin/python bench/gate_time.py OUTPUT [--policy FILE] [--repeat 3]

Both paths must report the same failures (checked here); the GX context is created once, as in a
run, and reported on its own line.
"""

from __future__ import annotations

import argparse
import os
import time

for k, v in {"GX_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}.items():
    os.environ.setdefault(k, v)
import checkout  # noqa: E402,F401  (reelflow from this checkout when it is not installed)

from reelflow.curation import gates  # noqa: E402
from reelflow.curation.policy import load_policy  # noqa: E402
from reelflow.curation.records import OK  # noqa: E402
from reelflow.curation.stage_list import PIPELINE, stage_expectations  # noqa: E402
from reelflow.curation.stage_store import StageStore  # noqa: E402
from reelflow.curation.storage import Storage  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output")
    ap.add_argument("--policy", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    policy = load_policy(a.policy)
    store = StageStore(Storage(), a.output)
    plan = [(s.name, s.input_stage, s.input_id_column) for s in PIPELINE]
    t0 = time.perf_counter()
    gates._context()
    print(f"GX context: {time.perf_counter() - t0:.2f} s")
    total = base = 0.0
    for stage, input_stage, id_col in plan:
        table = store.read(stage)
        expected = (set(table.column("item_id").to_pylist()) if input_stage is None else
                    {r["item_id"] for r in store.read(input_stage).select(["item_id", "status"]).to_pylist()
                     if r["status"] == OK})
        df = gates._to_pandas(table)
        suite = stage_expectations(stage, expected, id_col, policy)
        grouped = _best(a.repeat, lambda: gates._validate(stage, df, suite, "item_id"))
        whole = _best(a.repeat, lambda: gates._validate_batch(stage, df, suite, "item_id"))
        if _failed(grouped[1]) != _failed(whole[1]):
            raise SystemExit(f"{stage}: the two paths disagree: {grouped[1]} vs {whole[1]}")
        total += grouped[0]
        base += whole[0]
        print(f"{stage:8s} {table.num_rows:5d} rows  {len(suite):3d} expectations  grouped {grouped[0]:.2f} s"
              f"  GX whole {whole[0]:.2f} s  ratio {whole[0] / grouped[0]:.1f}x")
    print(f"all gates: grouped {total:.2f} s, GX whole {base:.2f} s, ratio {base / total:.1f}x")


def _best(repeat: int, fn):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def _failed(failures) -> list[tuple[str, tuple]]:
    return sorted((f.expectation, tuple(sorted(f.rows))) for f in failures)


if __name__ == "__main__":
    main()
