"""A stage's resumable state as a torch.distributed.checkpoint (DCP) directory, the same for DDP,
FSDP and HSDP.

    <checkpoint>/state/          DCP: trained module + AdamW state, one file per rank that holds data
    <checkpoint>/loop.json       step, batches consumed per kind (the data plan), samples, elapsed, world size
    <checkpoint>/rng/rank_<r>.pt each rank's torch RNG state
    <checkpoint>/model.pt        (last checkpoint of a stage) the single-file generation checkpoint

Every rank writes its own shard into its own directory and Ray Train merges the workers'
directories into one checkpoint. DCP records each tensor's global shape and each shard's place,
so a checkpoint saved by N workers loads into M (2 -> 1 -> 2): the planner reads the pieces each
new shard covers. A DDP state is the same file set (replicated tensors saved once), so a stage can
also change strategy between restarts. Frozen parameters (the text backbone) are not saved: the
next run loads them from where the stage did.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

log = logging.getLogger(__name__)

STATE_DIR = "state"
LOOP_FILE = "loop.json"
RNG_DIR = "rng"
LEGACY_STATE_FILE = "state.pt"  # checkpoints written before sharded state (one torch.save by rank 0)


@dataclass
class LoopPosition:
    """Where the loop stands: enough to continue the same run at any worker count."""

    step: int = 0
    consumed: dict[str, int] = field(default_factory=lambda: {"image": 0, "video": 0})
    samples: int = 0  # across all workers
    elapsed_s: float = 0.0  # training time across restarts
    world_size: int = 1  # of the run that wrote it


def _options(full: bool = False):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    if full:
        return StateDictOptions(full_state_dict=True, cpu_offload=True)
    return StateDictOptions(ignore_frozen_params=True)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def save_train_state(directory: str | Path, module: nn.Module, optimizer: torch.optim.Optimizer,
                     position: LoopPosition) -> None:
    """Collective: every rank calls it with its own (local) directory."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    directory = Path(directory)
    model_sd, optim_sd = get_state_dict(module, optimizer, options=_options())
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=directory / STATE_DIR)
    rank = _rank()
    (directory / RNG_DIR).mkdir(parents=True, exist_ok=True)
    torch.save(torch.get_rng_state(), directory / RNG_DIR / f"rank_{rank}.pt")
    if rank == 0:
        (directory / LOOP_FILE).write_text(json.dumps(position.__dict__))


def load_train_state(directory: str | Path, module: nn.Module, optimizer: torch.optim.Optimizer,
                     device: torch.device) -> LoopPosition:
    """Collective: restore module and optimizer in place (resharded to this run's workers)."""
    directory = Path(directory)
    if (directory / LEGACY_STATE_FILE).exists() and not (directory / STATE_DIR).exists():
        return _load_legacy(directory, module, optimizer, device)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(module, optimizer, options=_options())
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=directory / STATE_DIR)
    # Frozen parameters were not saved: load non-strictly, then insist nothing else is missing.
    result = set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                            options=StateDictOptions(ignore_frozen_params=True, strict=False))
    frozen = {_clean_fqn(n) for n, p in module.named_parameters() if not p.requires_grad}
    missing = [k for k in getattr(result, "missing_keys", []) if _clean_fqn(k) not in frozen]
    if missing or getattr(result, "unexpected_keys", []):
        raise RuntimeError(f"stage state in {directory} does not fit the module: missing {missing[:5]}, "
                           f"unexpected {list(result.unexpected_keys)[:5]}")
    position = LoopPosition(**json.loads((directory / LOOP_FILE).read_text()))
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rng = directory / RNG_DIR / f"rank_{_rank()}.pt"
    if position.world_size == world and rng.exists():
        torch.set_rng_state(torch.load(rng, weights_only=True))
    elif position.world_size != world:
        # The step noise is drawn per (seed, rank, step) and needs no state; only the TAE's
        # posterior sampling reads the global generator, and that run had other ranks.
        log.warning("resuming a %d-worker state on %d workers: the data plan is dealt anew from batch %s, "
                    "global RNG streams restart", position.world_size, world, position.consumed)
    return position


def _clean_fqn(name: str) -> str:
    """A parameter name without the wrappers' prefixes (DDP, activation checkpointing, compile)."""
    for prefix in ("module.", "_checkpoint_wrapped_module.", "_orig_mod."):
        name = name.replace(prefix, "")
    return name


def _load_legacy(directory: Path, module: nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device) -> LoopPosition:
    from reelflow.training.parallel import unwrap

    payload = torch.load(directory / LEGACY_STATE_FILE, map_location=device, weights_only=True)
    unwrap(module).load_state_dict(payload["module"])
    optimizer.load_state_dict(payload["optimizer"])
    loop = payload["loop"]
    return LoopPosition(step=loop["step"], consumed=dict(loop["consumed"]), samples=loop["samples"],
                        elapsed_s=loop["elapsed_s"])


def full_module_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The whole trained module's state dict on CPU, gathered from the shards (collective under
    FSDP; rank 0 gets the tensors, the other ranks may get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module, options=_options(full=True))


def generation_parts(kind: str, full: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Split a trained module's full state into the generation checkpoint's parts
    (training/checkpoint.py): the video stage trains the transformer and the text encoder together."""
    if kind == "video":
        return {part: {k[len(part) + 1:]: v for k, v in full.items() if k.startswith(part + ".")}
                for part in ("video", "text")}
    return {kind: dict(full)}
