"""Flow-matching video transformer (Movie Gen's text-to-video backbone).

latents (B, C, T, H, W) --3-D patchify (1x2x2)--> tokens (B, N, dim)
  + factorized learnable positional embedding (time + height + width), added before every block
  -> n_layers x [adaLN self-attention -> cross-attention to text -> adaLN SwiGLU FFN]
  -> modulated norm + linear -> unpatchify -> velocity (B, C, T, H, W)

Self-attention is full and bidirectional over all space-time tokens (Movie Gen), through
F.scaled_dot_product_attention. Images are one-latent-frame videos.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from reelflow.models.layers import Block, FinalLayer, RMSNorm, TimestepEmbedder, init_linear_weights


@dataclass
class VideoTransformerConfig:
    latent_channels: int = 16  # TAE latent channels (Movie Gen)
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (t, h, w) (Movie Gen)
    dim: int = 6144  # Movie Gen 30B
    n_layers: int = 48  # Movie Gen 30B
    n_heads: int = 48  # Movie Gen 30B
    ffn_dim: int = 16384  # Movie Gen 30B (≈ 8/3·dim: a SwiGLU ratio)
    ffn_kind: str = "swiglu"
    text_dim: int = 4096  # width of the text-encoder output sequence
    max_frames: int = 32  # latent frames (Movie Gen trains up to 32 latent frames)
    max_height: int = 64  # patches: 1024 px / 8 (TAE) / 2 (patch)
    max_width: int = 64
    norm_eps: float = 1e-6
    qk_norm: bool = True

    def __post_init__(self) -> None:
        self.patch_size = tuple(self.patch_size)


class VideoTransformer(nn.Module):
    def __init__(self, cfg: VideoTransformerConfig):
        super().__init__()
        self.cfg = cfg
        pt, ph, pw = cfg.patch_size
        self.patch_embed = nn.Conv3d(cfg.latent_channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        # factorized positional embeddings: T + H + W rows instead of T·H·W (Movie Gen)
        self.pos_t = nn.Parameter(torch.randn(cfg.max_frames // pt, cfg.dim) * 0.02)
        self.pos_h = nn.Parameter(torch.randn(cfg.max_height, cfg.dim) * 0.02)
        self.pos_w = nn.Parameter(torch.randn(cfg.max_width, cfg.dim) * 0.02)
        self.time_embed = TimestepEmbedder(cfg.dim)
        self.time_mod = nn.Linear(cfg.dim, 6 * cfg.dim)  # adaLN-single: shared by all blocks
        self.text_proj = nn.Linear(cfg.text_dim, cfg.dim, bias=False)
        self.text_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.n_heads, cfg.ffn_dim, cfg.ffn_kind, cfg.norm_eps, cfg.qk_norm)
            for _ in range(cfg.n_layers)
        )
        self.final = FinalLayer(cfg.dim, pt * ph * pw * cfg.latent_channels, cfg.norm_eps)
        init_linear_weights(self)
        self.final.zero_init()
        nn.init.zeros_(self.time_mod.weight)
        nn.init.zeros_(self.time_mod.bias)

    def pos_embed(self, t: int, h: int, w: int) -> torch.Tensor:
        """(t·h·w, dim) embedding for a grid of t x h x w patches."""
        if t > self.pos_t.shape[0] or h > self.pos_h.shape[0] or w > self.pos_w.shape[0]:
            raise ValueError(
                f"patch grid {(t, h, w)} exceeds positional tables "
                f"{(self.pos_t.shape[0], self.pos_h.shape[0], self.pos_w.shape[0])}; call resize_pos_embed"
            )
        pos = self.pos_t[:t, None, None] + self.pos_h[None, :h, None] + self.pos_w[None, None, :w]
        return pos.reshape(t * h * w, -1)

    @torch.no_grad()
    def resize_pos_embed(self, max_frames: int | None = None, max_height: int | None = None,
                         max_width: int | None = None) -> None:
        """Grow the positional tables for a later training stage (Movie Gen's hand-off).

        Time is *extended*: old rows keep their values, new frames get fresh small random rows
        (T2I -> video adds new temporal embeddings). Height and width are *interpolated*
        linearly over the same field of view (256 px -> 768 px expands them 3x); with an odd
        integer factor k, new row k·i + (k-1)/2 equals old row i exactly.
        """
        pt = self.cfg.patch_size[0]
        if max_frames is not None and max_frames // pt > self.pos_t.shape[0]:
            old = self.pos_t.data
            new = torch.randn(max_frames // pt, old.shape[1], dtype=old.dtype, device=old.device) * 0.02
            new[: old.shape[0]] = old
            self.pos_t = nn.Parameter(new)
            self.cfg.max_frames = max_frames
        if max_height is not None and max_height != self.pos_h.shape[0]:
            self.pos_h = nn.Parameter(_interpolate_rows(self.pos_h.data, max_height))
            self.cfg.max_height = max_height
        if max_width is not None and max_width != self.pos_w.shape[0]:
            self.pos_w = nn.Parameter(_interpolate_rows(self.pos_w.data, max_width))
            self.cfg.max_width = max_width

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: noisy latents (B, C, T, H, W); t: flow time (B,) in [0, 1]; text: (B, L, text_dim)."""
        b, c, T, H, W = x.shape
        pt, ph, pw = self.cfg.patch_size
        if T % pt or H % ph or W % pw:
            raise ValueError(f"latent shape {(T, H, W)} not divisible by patch size {self.cfg.patch_size}")
        gt, gh, gw = T // pt, H // ph, W // pw
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        pos = self.pos_embed(gt, gh, gw).to(tokens.dtype)
        t_emb = self.time_embed(t)
        mod = self.time_mod(F.silu(t_emb)).view(b, 6, -1)
        ctx = self.text_norm(self.text_proj(text))
        for block in self.blocks:
            tokens = block(tokens + pos, mod, ctx, text_mask)  # positions added at every layer (Movie Gen)
        out = self.final(tokens, t_emb)  # (B, N, pt·ph·pw·C)
        out = out.view(b, gt, gh, gw, pt, ph, pw, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, c, T, H, W)


def _interpolate_rows(table: torch.Tensor, n: int) -> torch.Tensor:
    """Linearly resample an (m, dim) table to (n, dim) rows (align_corners=False)."""
    y = F.interpolate(table.t()[None].float(), size=n, mode="linear", align_corners=False)
    return y[0].t().to(table.dtype).contiguous()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
