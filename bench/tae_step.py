"""A TAE training step with Conv25d's temporal conv as a batched matmul (models/tae.py) against the
plain formulation, nn.Conv1d over each pixel's frames (what models/tae.py ran before), measured in
the same run on the same weights and batches.

Both run forward, loss, backward and an AdamW step of the TAE of a model size, on a video batch
(the stage's frames) and on an image batch (the joint TAE stage alternates them), with the thread
count a Ray Train worker of the tiny schedule gets (cpus_per_worker):

    .venv/bin/python bench/tae_step.py [--size tiny] [--batch 8] [--frames 5] [--px 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import checkout  # noqa: F401  (reelflow from this checkout when it is not installed)
import torch
import torch.nn.functional as F

from reelflow.models import configs
from reelflow.models.tae import Conv25d, TemporalAutoencoder, tae_loss


def conv1d_forward(self: Conv25d, x: torch.Tensor) -> torch.Tensor:
    """The reference: 2-D conv per frame, then nn.Conv1d over the B*H*W rows of T frames."""
    b, _, t, _, _ = x.shape
    y = self.spatial(x.transpose(1, 2).flatten(0, 1))
    c, h, w = y.shape[1:]
    y = y.view(b, t, c, h, w).permute(0, 3, 4, 2, 1).reshape(b * h * w, c, t)
    y = self.temporal(F.pad(y, (2, 0) if self.causal else (1, 1), mode="replicate"))
    return y.view(b, h, w, c, y.shape[-1]).permute(0, 3, 4, 1, 2).contiguous()


def time_steps(tae: TemporalAutoencoder, batches: list[torch.Tensor], steps: int) -> float:
    """Mean seconds of a training step over `steps` steps (after two untimed ones)."""
    opt = torch.optim.AdamW(tae.parameters(), 5e-4)

    def step(x: torch.Tensor) -> None:
        recon, mean, logvar = tae(x)
        loss = tae_loss(x, recon, mean, logvar, tae.cfg)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for x in batches[:2]:
        step(x)
    t0 = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", choices=["tiny", "small"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--px", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = getattr(configs, args.size)().tae
    gen = torch.Generator().manual_seed(0)
    print(f"{args.size} TAE, batch {args.batch}, {args.px} px, {args.threads} thread(s), {args.steps} timed steps")
    print(f"{'batch':>8} {'conv1d ms':>10} {'matmul ms':>10} {'speed-up':>9}")
    for frames in (args.frames, 1):
        batches = [torch.rand(args.batch, 3, frames, args.px, args.px, generator=gen) * 2 - 1 for _ in range(4)]
        seconds = {}
        for name in ("conv1d", "matmul"):
            torch.manual_seed(0)
            tae = TemporalAutoencoder(cfg)
            if name == "conv1d":
                for m in tae.modules():
                    if isinstance(m, Conv25d):
                        m.forward = conv1d_forward.__get__(m)
            seconds[name] = time_steps(tae, batches, args.steps)
        label = f"{frames} frame" + ("s" if frames > 1 else "")
        print(f"{label:>8} {seconds['conv1d'] * 1e3:>10.1f} {seconds['matmul'] * 1e3:>10.1f} "
              f"{seconds['conv1d'] / seconds['matmul']:>8.2f}x")


if __name__ == "__main__":
    main()
