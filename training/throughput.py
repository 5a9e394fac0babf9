"""Tokens, model FLOPs and MFU of a training step, for the metric rows and the report.

A *token* is one position of the transformer's sequence: a (1x2x2) latent patch for the video
model, a log-mel frame for the audio model. The TAE has no sequence: its rows carry no tokens.

Model FLOPs per sample (forward + backward = 3x forward, the PaLM/Chinchilla convention; a
recomputed forward under activation checkpointing is not useful work and is not counted):
    6 * P * S                      the matmuls of P trained transformer parameters over S tokens
  + 12 * L * d * S^2               self-attention scores and values (QK^T and AV), L layers of width d
MFU = model FLOPs per second / (the accelerator's dense bf16 peak x devices).
"""

from __future__ import annotations

import torch
import torch.nn as nn

# Dense bf16 tensor-core peaks (vendor data sheets, no sparsity), TFLOP/s per device.
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def bf16_peak_tflops(device: torch.device) -> float | None:
    """The device's dense bf16 peak, or None where unknown (CPU, an unlisted GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def transformer_of(module: nn.Module) -> nn.Module | None:
    """The video or audio transformer a stage trains (None for the TAE)."""
    inner = getattr(module, "video", module)
    return inner if isinstance(getattr(inner, "blocks", None), nn.ModuleList) else None


def flops_per_sample(trained_params: int, n_layers: int, dim: int, tokens: int) -> float:
    return 6.0 * trained_params * tokens + 12.0 * n_layers * dim * tokens * tokens


class StepFlops:
    """Model FLOPs of a stage's steps, from the trained transformer's size."""

    def __init__(self, module: nn.Module):
        net = transformer_of(module)
        self.active = net is not None
        if net is None:
            self.params = self.layers = self.dim = 0
            return
        # Every trained parameter does a multiply-add per token (embeddings are a small share).
        self.params = sum(p.numel() for p in net.parameters() if p.requires_grad)
        self.layers = len(net.blocks)
        self.dim = int(net.cfg.dim)

    def of_batch(self, samples: int, tokens_per_sample: int) -> float:
        if not self.active or tokens_per_sample <= 0:
            return 0.0
        return samples * flops_per_sample(self.params, self.layers, self.dim, tokens_per_sample)
