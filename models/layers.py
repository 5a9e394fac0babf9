"""Transformer building blocks shared by the video and audio flow-matching models.

Llama-style pieces (RMSNorm, SwiGLU, bias-free projections) arranged as Movie Gen's block:
self-attention -> cross-attention to text -> feed-forward, with adaptive layer norm for the
flow time on the self-attention and feed-forward branches.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under bf16 autocast x arrives in bf16 and the weight is fp32: torch then skips its fused
        # kernel ("Mismatch dtype between input and weight", seen on the H200, BENCHMARKS.md).
        weight = self.weight.to(x.dtype) if self.weight is not None else None
        return F.rms_norm(x, (x.shape[-1],), weight, self.eps)


class FeedForward(nn.Module):
    """SwiGLU (Llama; hidden ≈ 8/3·dim) or a plain GELU MLP (hidden = 4·dim)."""

    def __init__(self, dim: int, hidden: int, kind: str = "swiglu"):
        super().__init__()
        if kind not in ("swiglu", "gelu"):
            raise ValueError(f"unknown feed-forward kind {kind!r}")
        self.kind = kind
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False) if kind == "swiglu" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w3 is not None:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.w2(F.gelu(self.w1(x), approximate="tanh"))


class Attention(nn.Module):
    """Multi-head attention via F.scaled_dot_product_attention.

    Self-attention when `context` is None, cross-attention otherwise. Per-head RMSNorm on
    queries and keys (QK-norm) keeps attention logits bounded as width grows.
    """

    def __init__(self, dim: int, n_heads: int, context_dim: int | None = None, qk_norm: bool = True):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        context_dim = context_dim or dim
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(context_dim, dim, bias=False)
        self.wv = nn.Linear(context_dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, n, _ = x.shape
        kv = x if context is None else context
        q = self.wq(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(kv).view(b, kv.shape[1], self.n_heads, self.head_dim).transpose(1, 2)
        v = self.wv(kv).view(b, kv.shape[1], self.n_heads, self.head_dim).transpose(1, 2)
        q, k = self.q_norm(q), self.k_norm(k)
        # bool mask: True = attend. Shape (B, 1, 1, L) broadcasts over heads and queries.
        mask = None if context_mask is None else context_mask[:, None, None, :].to(torch.bool)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(out.transpose(1, 2).reshape(b, n, -1))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of the flow time t in [0, 1] (scaled by 1000 like diffusion steps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Block(nn.Module):
    """self-attention -> cross-attention to text -> FFN (Movie Gen block order).

    Adaptive layer norm follows PixArt-α's "adaLN-single": one modulation vector per sample
    is computed once for the whole network from the time embedding, and each block adds its own
    learned (6, dim) table. A per-block Linear(dim, 6·dim), as in DiT, would add 6·dim² per
    layer (~11B parameters at Movie Gen's width), which the published 30B total leaves no room for.
    """

    def __init__(self, dim: int, n_heads: int, ffn_dim: int, ffn_kind: str = "swiglu",
                 norm_eps: float = 1e-6, qk_norm: bool = True):
        super().__init__()
        self.norm1 = RMSNorm(dim, norm_eps, affine=False)
        self.attn = Attention(dim, n_heads, qk_norm=qk_norm)
        self.norm_cross = RMSNorm(dim, norm_eps)
        self.cross_attn = Attention(dim, n_heads, qk_norm=qk_norm)
        self.norm2 = RMSNorm(dim, norm_eps, affine=False)
        self.ffn = FeedForward(dim, ffn_dim, ffn_kind)
        # zero table + zero global modulation => gates are 0 and every block starts as identity
        self.mod_table = nn.Parameter(torch.zeros(6, dim))

    def forward(self, x: torch.Tensor, mod: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor | None) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = (mod + self.mod_table).unbind(1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        x = x + self.cross_attn(self.norm_cross(x), text, text_mask)
        x = x + gate2[:, None] * self.ffn(modulate(self.norm2(x), shift2, scale2))
        return x


class FinalLayer(nn.Module):
    """Modulated norm and a zero-initialised projection, so the initial velocity is 0."""

    def __init__(self, dim: int, out_dim: int, norm_eps: float = 1e-6):
        super().__init__()
        self.norm = RMSNorm(dim, norm_eps, affine=False)
        self.mod = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, out_dim)

    def zero_init(self) -> None:
        for layer in (self.mod, self.proj):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.mod(F.silu(t_emb)).chunk(2, dim=-1)
        return self.proj(modulate(self.norm(x), shift, scale))


def init_linear_weights(module: nn.Module, std: float = 0.02) -> None:
    """Small normal init for every nn.Linear; callers zero specific layers afterwards."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
