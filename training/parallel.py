"""How a stage's trained module is spread over its workers: DDP, FSDP2 or HSDP, with activation
checkpointing and torch.compile per block (the stage's `parallelism:`, training/schedule.py).

torchtitan's order: activation checkpointing, then compile, then sharding, each per transformer
block. Under FSDP2 (`torch.distributed.fsdp.fully_shard`) every block is its own unit, gathered
just before it runs and freed after, and the root holds what is left (embeddings, final layer);
parameters, gradients and AdamW state are DTensors sharded over the mesh. HSDP is the same on a 2-D
(replicate, shard) mesh. The frozen text backbone inside the video stage's module is left out of
sharding (`ignored_params`): it has no gradient or optimizer state to save memory on.

Pure PyTorch: the Ray Train loop (training/loop.py) and bench/train_mfu.py both call this.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from reelflow.training.schedule import ParallelismSpec

log = logging.getLogger(__name__)


@dataclass
class Parallelized:
    """The module as the loop trains it, and how it was wrapped."""

    module: nn.Module  # DDP wrapper, or the module itself (FSDP2 shards in place)
    strategy: str
    mesh: object | None = None  # DeviceMesh for fsdp/hsdp

    @property
    def sharded(self) -> bool:
        return self.strategy in ("fsdp", "hsdp")


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """The repeated units of a trained module, sharded and checkpointed one by one: the video or
    audio transformer's blocks; the TAE's encoder and decoder (it has no block list)."""
    inner = getattr(module, "video", module)  # training.steps.VideoWithText holds the transformer
    blocks = getattr(inner, "blocks", None)
    if isinstance(blocks, nn.ModuleList):
        return list(blocks)
    return [m for m in (getattr(module, "encoder", None), getattr(module, "decoder", None)) if m is not None]


def frozen_params(module: nn.Module) -> set[nn.Parameter]:
    """Parameters that never train (the text backbone): not sharded, not saved with the stage state."""
    return {p for p in module.parameters() if not p.requires_grad}


def apply_activation_checkpointing(module: nn.Module, every: int) -> int:
    """Wrap every `every`-th block so its activations are recomputed in backward; returns how many."""
    if every <= 0:
        return 0
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    wrapped = 0
    inner = getattr(module, "video", module)
    blocks = getattr(inner, "blocks", None)
    if isinstance(blocks, nn.ModuleList):
        for i, block in enumerate(blocks):
            if i % every == 0:
                # The wrapper strips its own prefix from state-dict keys: checkpoints are unchanged.
                blocks[i] = checkpoint_wrapper(block, preserve_rng_state=False)
                wrapped += 1
    else:
        for name in ("encoder", "decoder"):
            child = getattr(module, name, None)
            if child is not None:
                setattr(module, name, checkpoint_wrapper(child, preserve_rng_state=False))
                wrapped += 1
    return wrapped


def apply_compile(module: nn.Module) -> int:
    """torch.compile each block in place (`nn.Module.compile` keeps the state-dict keys)."""
    blocks = transformer_blocks(module)
    for block in blocks:
        block.compile()
    return len(blocks)


def device_mesh(spec: ParallelismSpec, world_size: int, device: torch.device):
    from torch.distributed.device_mesh import init_device_mesh

    device_type = device.type
    if spec.strategy == "hsdp":
        replicate = int(spec.replicate or 1)
        if world_size % replicate:
            raise ValueError(f"hsdp: replicate {replicate} does not divide the {world_size} workers")
        return init_device_mesh(device_type, (replicate, world_size // replicate),
                                mesh_dim_names=("replicate", "shard"))
    return init_device_mesh(device_type, (world_size,), mesh_dim_names=("shard",))


def apply_fsdp(module: nn.Module, mesh, bf16: bool, extra_methods: tuple[str, ...] = ()) -> None:
    """fully_shard every block, then the root. bf16 compute with fp32 gradient reduction on GPU
    (Movie Gen trains in bf16); fp32 on CPU, where gloo has no bf16 reduce worth having."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    # cast_forward_inputs off: FSDP would cast every input to bf16, the flow time t included (0.9123
    # reached the x1000 sinusoidal embedding as 0.9141), where DDP under the loop's autocast keeps
    # inputs and the residual stream fp32 and casts only what the matmuls read.
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)
          if bf16 else MixedPrecisionPolicy())
    ignored = frozen_params(module)
    blocks = transformer_blocks(module)
    for i, block in enumerate(blocks):
        # The last block's parameters are needed again at once by backward: keep them gathered.
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=i < len(blocks) - 1,
                    ignored_params=ignored or None)
    fully_shard(module, mesh=mesh, mp_policy=mp, ignored_params=ignored or None)
    for name in extra_methods:  # e.g. the TAE's `encode`, called outside forward
        register_fsdp_forward_method(module, name)


def parallelize(module: nn.Module, spec: ParallelismSpec, world_size: int, device: torch.device,
                bf16: bool = False) -> Parallelized:
    """Wrap `module` for training on `world_size` workers as `spec` says (the process group is up).

    The module arrives whole on every rank (built, or loaded from the stage before, then sharded):
    fine while one device holds the model once; Movie Gen's 30B would need building on the meta
    device and loading each rank's shard (torchtitan's way), which reelflow does not do yet."""
    every = spec.checkpoint_every()
    if every:
        apply_activation_checkpointing(module, every)
    if spec.compile:
        apply_compile(module)
    if spec.strategy == "ddp":
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            # Frozen parts and branches a batch kind skips (the text dropout path) leave some
            # parameters without a gradient on some steps.
            module = DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)
        return Parallelized(module, "ddp")
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"parallelism {spec.strategy} needs torch.distributed initialised (Ray Train does it)")
    mesh = device_mesh(spec, world_size, device)
    extra = ("encode", "decode") if hasattr(module, "encode") and hasattr(module, "decoder") else ()
    apply_fsdp(module, mesh, bf16, extra)
    return Parallelized(module, spec.strategy, mesh)


def unwrap(module: nn.Module) -> nn.Module:
    """The module under a DDP wrapper (FSDP2 wraps nothing: the module is sharded in place)."""
    return module.module if hasattr(module, "module") and isinstance(module.module, nn.Module) else module


def is_sharded(module: nn.Module) -> bool:
    """FSDP2 sharded it: its forward is a collective (parameters are gathered from every rank)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def clip_grad_norm(module: nn.Module, max_norm: float) -> float:
    """Clip to `max_norm` and return the total norm before clipping, the same on every rank.
    Under FSDP the gradients are shards: the norm torch computes is a DTensor reduced over the mesh."""
    params = [p for p in module.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)
