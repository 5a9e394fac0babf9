"""Per-frame TAE reconstruction error on the bundled shapes probe (issue #12).

The causal TAE encodes a clip's first frame on its own and each later group of
``temporal_compression`` frames into one latent frame. This prints, for each pixel frame, the mean
RGB distance (0-441) between the reconstruction's object pixels (the ground truth's mask) and the
object's colour, over the probe's clips, and how often the first frame alone keeps the shape:

    .venv/bin/python bench/tae_frame_error.py CHECKPOINT   # e.g. demo_output/train/model.pt
"""

from __future__ import annotations

import argparse

import checkout  # noqa: F401  (reelflow from this checkout when it is not installed)
import numpy as np

from reelflow.training.checkpoint import load_checkpoint
from reelflow.training.eval import probe_prompts, reference_clip, tae_round_trip
from reelflow.training.shape_metrics import measure
from reelflow.training.synthetic_shapes import COLOURS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    args = ap.parse_args()
    models = load_checkpoint(args.checkpoint)
    cfg = models.config
    n = cfg.sample.frames or cfg.tae.pixel_frames(3)
    print(f"{n} frames at {cfg.sample.width}x{cfg.sample.height}, temporal compression {cfg.tae.temporal_compression}")
    errors, first_shape = [], []
    for i, spec in enumerate(probe_prompts()):
        clip = reference_clip(spec, i, 0)
        truth, rec = tae_round_trip(models, clip, n)
        target = np.array(COLOURS[clip.colour], float)
        errors.append([np.linalg.norm(rec[t][truth[t].max(axis=-1) > 0].astype(float).mean(axis=0) - target)
                       for t in range(n)])
        # the shape metric wants a clip: the first frame held still
        first_shape.append(measure(np.repeat(rec[:1], 3, axis=0), cfg.sample.fps).shape == clip.shape)
    errors = np.array(errors)
    print("| frame | " + " | ".join(str(t) for t in range(n)) + " |")
    print("|---|" + "---:|" * n)
    print("| colour error (0-441) | " + " | ".join(f"{e:.0f}" for e in errors.mean(axis=0)) + " |")
    print(f"frame 0: {errors[:, 0].mean():.1f}; frames 1-{n - 1}: {errors[:, 1:].mean():.1f}; "
          f"shape right on the first frame alone: {np.mean(first_shape):.0%}")


if __name__ == "__main__":
    main()
