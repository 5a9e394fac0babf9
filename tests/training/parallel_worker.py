"""Run by tests/training/test_parallel.py as `python parallel_worker.py OUT.json`: two gloo processes
train the tiny video transformer (with its trainable text encoder) for a few steps under each
parallelism of training/parallel.py, from the same weights and the same batches, and rank 0 writes
the losses, gradient norms and the gathered final weights' checksums per configuration."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

CONFIGS = {
    "ddp": {"strategy": "ddp"},
    "fsdp": {"strategy": "fsdp"},
    "hsdp_2x1": {"strategy": "hsdp", "replicate": 2},  # two replicas of one shard each
    "hsdp_1x2": {"strategy": "hsdp", "replicate": 1},  # one replica sharded over both
    "fsdp_ac_every_2": {"strategy": "fsdp", "activation_checkpointing": 2},
    "ddp_ac_full": {"strategy": "ddp", "activation_checkpointing": "full"},
}
STEPS, BATCH = 3, 4


def _models():
    from reelflow.models.configs import get_config
    from reelflow.models.text_encoder import TextEncoderConfig
    from reelflow.training.checkpoint import build_models

    config = get_config("tiny", with_audio=False)
    # The character encoder alone: no MiniLM load per process (the Ray Train test covers the frozen backbone)
    config.text = TextEncoderConfig(backbone="none", out_dim=64, char_encoder=True, char_dim=32, char_layers=1,
                                    char_heads=2, char_max_length=32)
    config.video.n_layers = 4  # four FSDP units, two of them checkpointed under every-2
    torch.manual_seed(0)
    return build_models(config)


def _run(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    from reelflow.training.parallel import clip_grad_norm, parallelize
    from reelflow.training.schedule import ParallelismSpec
    from reelflow.training.steps import trainable_module, video_step
    from reelflow.training.train_state import full_module_state

    results = {}
    for name, spec in CONFIGS.items():
        models = _models()
        module = trainable_module(models, "video")
        keys_before = sorted(module.state_dict())
        par = parallelize(module, ParallelismSpec(**spec), world, torch.device("cpu"))
        opt = torch.optim.AdamW([p for p in par.module.parameters() if p.requires_grad], lr=1e-3)
        losses, norms = [], []
        per = BATCH // world
        for step in range(STEPS):
            latents = torch.randn(BATCH, 8, 2, 8, 8, generator=torch.Generator().manual_seed(step))
            captions = [f"a red circle moves {d}" for d in ("left", "right", "up", "down")]
            g = torch.Generator().manual_seed(1000 * step + rank)
            loss = video_step(par.module, models, None, captions[rank * per:(rank + 1) * per], g,
                              latents=latents[rank * per:(rank + 1) * per])["loss"]
            opt.zero_grad()
            loss.backward()
            norms.append(clip_grad_norm(par.module, 1.0))
            opt.step()
            t = torch.tensor([loss.item()], dtype=torch.float64)
            dist.all_reduce(t)
            losses.append(t.item() / world)
        full = full_module_state(par.module)
        if rank == 0:
            results[name] = {"losses": losses, "norms": norms,
                             "weights": {k: float(v.double().sum()) for k, v in sorted(full.items())},
                             "keys_unchanged": sorted(full) == keys_before}
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    mp.spawn(_run, args=(2, _free_port(), sys.argv[1]), nprocs=2)
