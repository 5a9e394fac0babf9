"""Learning curves of a finished training run: each stage's evaluation metrics against the steps
and the training wall time spent up to the end of that stage (from the run's metrics.parquet).

    .venv/bin/python bench/learning_curves.py demo_output/train      # after `make demo`

Prints a Markdown table for BENCHMARKS.md; metrics are the shapes probe's (training/eval.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

METRICS = {  # column -> heading
    "eval_tae_psnr": "TAE PSNR dB", "eval_tae_object_colour": "TAE obj colour", "eval_tae_object_direction": "TAE obj direction",
    "eval_present": "present", "eval_colour": "colour", "eval_shape": "shape", "eval_direction": "direction",
    "eval_sync_ok": "sync ok", "eval_sync_error_ms": "sync err ms", "eval_silence_ok": "silence ok",
    "eval_v2a_sync_ok": "v2a sync ok", "eval_v2a_sync_error_ms": "v2a sync err ms", "eval_v2a_silence_ok": "v2a silence ok",
    "eval_clip_score": "CLIP score",  # only when the schedule's eval names a CLIP checkpoint
}


def curves(run_dir: Path) -> pd.DataFrame:
    m = pd.read_parquet(run_dir / "metrics.parquet")
    train = m[m["split"] == "train"].groupby("stage", sort=False).agg(steps=("step", "max"), wall_s=("elapsed_s", "max"))
    train["cum_steps"] = train["steps"].cumsum()
    train["cum_wall_s"] = train["wall_s"].cumsum()
    evals = m[m["split"] == "eval"].set_index("stage")
    cols = [c for c in METRICS if c in evals.columns and evals[c].notna().any()]
    return train.join(evals[cols]).rename(columns=METRICS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="A `reelflow train` output directory.")
    table = curves(ap.parse_args().run_dir)
    cols = ["stage", *table.columns]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for stage, row in table.iterrows():
        # iterrows upcasts a row with any float to float: step counts print as integers again
        cells = [stage] + ["" if pd.isna(v) else str(int(v)) if k in ("steps", "cum_steps") else
                           f"{v:.2f}" if isinstance(v, float) else str(v) for k, v in row.items()]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
