"""Temporal autoencoder (TAE): an image VAE inflated to video with "2.5D" convolutions.

Every 2-D spatial convolution is followed by a 1-D temporal convolution (Movie Gen). The
temporal convolution starts as the identity, so inflating a trained image autoencoder starts
from that autoencoder's behaviour. Time is downsampled by stride-2 temporal convolutions and
upsampled by nearest-neighbour repetition followed by a convolution (Movie Gen).

Tensor layout is (B, C, T, H, W) with pixels in [-1, 1].

Frame convention: T = 1 + r·k frames encode to 1 + k latent frames (r = temporal compression).
With causal temporal padding the first frame is encoded on its own, so an image is simply a
one-frame video and latent i is anchored at frame r·i. Movie Gen pads time symmetrically;
`causal=False` gives that, causal padding is the default because it makes images and videos
share one code path and makes tiles start cleanly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class TAEConfig:
    in_channels: int = 3
    latent_channels: int = 16  # Movie Gen
    base_channels: int = 128
    channel_mults: tuple[int, ...] = (1, 2, 4, 4)  # 3 downsamplings -> 8x spatial (Movie Gen)
    num_res_blocks: int = 2
    temporal_downsamples: int = 3  # 2^3 = 8x in time (Movie Gen)
    attention: bool = True  # spatial + temporal attention in the bottleneck
    causal: bool = True
    outlier_r: float = 3.0  # outlier penalty threshold in standard deviations (Movie Gen)
    # Movie Gen gives the outlier penalty a "large" weight. On footage where the subject is a small
    # object over a flat background (the synthetic shapes) the object's latents *are* the >3σ
    # outliers, and at 1e5 the penalty erases them: the TAE learns to return background
    # (measured: a red circle decoded as black). The small configs use a weight of 1.
    outlier_weight: float = 1e5
    # L2 added to the L1 reconstruction: L1's gradient is the same for a pixel off by 0.05 or by
    # 1.5, so a rare bright object is no louder than the background; L2 makes large errors count.
    mse_weight: float = 0.0
    # Initial log-variance of the posterior. At 0 the reparameterised sample adds unit noise to
    # latents whose means start near 0, drowning the signal until the encoder learns to shrink
    # it (slow under a tiny KL weight); starting small lets reconstruction learn from step one.
    logvar_init: float = 0.0
    # GroupNorm groups (at most). With one channel per group (32 groups on 32 channels, as the small
    # configs had) GroupNorm is an instance norm: each channel of a black frame with one red object is
    # rescaled to the same map whatever the object's colour, so colour must be recovered from
    # relative channel signs. The small configs use 1 (a per-frame layer norm), which keeps the
    # channels' ratios; measured on the synthetic shapes it learns colour in ~600 steps instead of
    # failing to in 800.
    norm_groups: int = 32
    tile_latents: int = 4  # 4 latents = 32 frames at 8x (Movie Gen's 32-frame tiles)
    decode_overlap_latents: int = 2  # 16 frames at 8x (Movie Gen)
    encode_overlap_latents: int = 1  # causal tiles need one latent of overlap to cover every frame
    # the generator works on latents * latent_scale (≈ 1 / latent std, measured on data after TAE
    # training, as Stable Diffusion's 0.18215) so that its targets have unit scale
    latent_scale: float = 1.0

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.channel_mults) - 1)

    @property
    def temporal_compression(self) -> int:
        return 2 ** self.temporal_downsamples

    def __post_init__(self) -> None:
        self.channel_mults = tuple(self.channel_mults)
        if self.temporal_downsamples > len(self.channel_mults) - 1:
            raise ValueError("temporal_downsamples cannot exceed the number of spatial downsamplings")

    def latent_frames(self, frames: int) -> int:
        r = self.temporal_compression
        if frames < 1 or (frames - 1) % r:
            raise ValueError(f"frame count must be 1 + {r}·k, got {frames}")
        return 1 + (frames - 1) // r

    def pixel_frames(self, latent_frames: int) -> int:
        return 1 + (latent_frames - 1) * self.temporal_compression


def _num_groups(channels: int, most: int = 32) -> int:
    for g in (32, 16, 8, 4, 2):
        if g <= most and channels % g == 0:
            return g
    return 1


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm applied to each frame separately: statistics never mix frames, so the network
    stays temporally local (exactly causal, and tiles agree with the untiled result)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = super().forward(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.reshape(b, t, c, h, w).transpose(1, 2)


class Conv25d(nn.Module):
    """2-D spatial conv on each frame, then a 1-D temporal conv (kernel 3) on each pixel."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, spatial_stride: int = 1,
                 temporal_stride: int = 1, causal: bool = True):
        super().__init__()
        self.causal = causal
        self.temporal_stride = temporal_stride
        self.spatial = nn.Conv2d(cin, cout, kernel, stride=spatial_stride, padding=kernel // 2)
        self.temporal = nn.Conv1d(cout, cout, 3, stride=temporal_stride)
        # identity init: the tap that reads the current frame (last tap if causal, centre otherwise)
        nn.init.zeros_(self.temporal.weight)
        nn.init.zeros_(self.temporal.bias)
        with torch.no_grad():
            tap = 2 if causal else 1
            self.temporal.weight[torch.arange(cout), torch.arange(cout), tap] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t, _, _ = x.shape
        y = self.spatial(x.transpose(1, 2).flatten(0, 1))  # (B*T, C, H, W)
        c, h, w = y.shape[1:]
        y = y.view(b, t, c, h * w)
        # The temporal conv (weights: the nn.Conv1d `temporal`) as one batched matmul over (B, T) in
        # the frame-major layout the spatial conv returns. As nn.Conv1d over B*H*W rows of T frames it
        # needed two full permute copies per layer, and oneDNN's 1-D kernel is slow on many short
        # rows: a tiny-config training step on 2 CPU cores took 250 -> 177 ms on 5-frame batches and
        # 120 -> 70 ms on images this way (BENCHMARKS.md; same result within float error, tested).
        # Replicate padding (Movie Gen): all of it on the past side when causal.
        before, after = (2, 0) if self.causal else (1, 1)
        y = torch.cat([y[:, :1]] * before + [y] + [y[:, -1:]] * after, dim=1)
        s = self.temporal_stride
        t2 = (t - 1) // s + 1
        # (B, T2, C, 3, HW): tap k of channel i at row 3i + k, the order of Conv1d's weight (C, C, 3),
        # which then reshapes to (C, 3C) without a copy
        taps = torch.stack([y[:, k: k + s * (t2 - 1) + 1: s] for k in range(3)], dim=3)
        weight = self.temporal.weight.reshape(c, 3 * c)
        n = b * t2
        out = torch.baddbmm(self.temporal.bias.view(1, c, 1).expand(n, c, h * w),
                            weight.expand(n, c, 3 * c), taps.view(n, 3 * c, h * w))
        # (B, C, T2, H, W) as a view of frame-major memory: the next spatial conv or per-frame norm
        # transposes it back for free
        return out.view(b, t2, c, h, w).transpose(1, 2)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, causal: bool, groups: int = 32):
        super().__init__()
        self.norm1 = FrameGroupNorm(_num_groups(cin, groups), cin)
        self.conv1 = Conv25d(cin, cout, causal=causal)
        self.norm2 = FrameGroupNorm(_num_groups(cout, groups), cout)
        self.conv2 = Conv25d(cout, cout, causal=causal)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention within each frame, then temporal self-attention at each pixel
    (Movie Gen adds 1-D temporal attention after each spatial attention). Output projections
    start at zero so the block starts as the identity, like the inflated temporal convs."""

    def __init__(self, channels: int, causal: bool, groups: int = 32):
        super().__init__()
        self.causal = causal
        self.norm_s = FrameGroupNorm(_num_groups(channels, groups), channels)
        self.qkv_s = nn.Linear(channels, 3 * channels)
        self.out_s = nn.Linear(channels, channels)
        self.norm_t = FrameGroupNorm(_num_groups(channels, groups), channels)
        self.qkv_t = nn.Linear(channels, 3 * channels)
        self.out_t = nn.Linear(channels, channels)
        for layer in (self.out_s, self.out_t):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        # spatial: sequences are the H·W pixels of one frame
        s = self.norm_s(x).permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)
        q, k, v = self.qkv_s(s).unsqueeze(1).chunk(3, dim=-1)
        s = self.out_s(F.scaled_dot_product_attention(q, k, v).squeeze(1))
        x = x + s.view(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        # temporal: sequences are the T frames of one pixel; causal mask keeps the encoder causal
        s = self.norm_t(x).permute(0, 3, 4, 2, 1).reshape(b * h * w, t, c)
        q, k, v = self.qkv_t(s).unsqueeze(1).chunk(3, dim=-1)
        s = self.out_t(F.scaled_dot_product_attention(q, k, v, is_causal=self.causal and t > 1).squeeze(1))
        return x + s.view(b, h, w, t, c).permute(0, 4, 3, 1, 2)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling then a 2.5D conv. In time the first frame stays single and
    every later frame is repeated, mapping 1 + k frames to 1 + 2k."""

    def __init__(self, channels: int, temporal: bool, causal: bool):
        super().__init__()
        self.temporal = temporal
        self.conv = Conv25d(channels, channels, causal=causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        x = F.interpolate(x.transpose(1, 2).reshape(b * t, c, h, w), scale_factor=2.0, mode="nearest")
        x = x.view(b, t, c, 2 * h, 2 * w).transpose(1, 2)
        if self.temporal and t > 1:
            x = torch.cat([x[:, :, :1], x[:, :, 1:].repeat_interleave(2, dim=2)], dim=2)
        return self.conv(x)


class Encoder(nn.Module):
    def __init__(self, cfg: TAEConfig):
        super().__init__()
        chans = [cfg.base_channels * m for m in cfg.channel_mults]
        groups = cfg.norm_groups
        self.conv_in = Conv25d(cfg.in_channels, chans[0], causal=cfg.causal)
        blocks: list[nn.Module] = []
        cin = chans[0]
        for i, cout in enumerate(chans):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(cin, cout, cfg.causal, groups))
                cin = cout
            if i < len(chans) - 1:
                temporal = i < cfg.temporal_downsamples
                blocks.append(Conv25d(cin, cin, spatial_stride=2, temporal_stride=2 if temporal else 1,
                                      causal=cfg.causal))
        self.down = nn.Sequential(*blocks)
        mid: list[nn.Module] = [ResBlock(cin, cin, cfg.causal, groups)]
        if cfg.attention:
            mid.append(AttentionBlock(cin, cfg.causal, groups))
        mid.append(ResBlock(cin, cin, cfg.causal, groups))
        self.mid = nn.Sequential(*mid)
        self.norm_out = FrameGroupNorm(_num_groups(cin, groups), cin)
        self.conv_out = Conv25d(cin, 2 * cfg.latent_channels, causal=cfg.causal)
        with torch.no_grad():  # the log-variance half starts at logvar_init (the temporal conv is the identity)
            self.conv_out.spatial.bias[cfg.latent_channels:] = cfg.logvar_init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: TAEConfig):
        super().__init__()
        chans = [cfg.base_channels * m for m in cfg.channel_mults]
        groups = cfg.norm_groups
        cin = chans[-1]
        self.conv_in = Conv25d(cfg.latent_channels, cin, causal=cfg.causal)
        mid: list[nn.Module] = [ResBlock(cin, cin, cfg.causal, groups)]
        if cfg.attention:
            mid.append(AttentionBlock(cin, cfg.causal, groups))
        mid.append(ResBlock(cin, cin, cfg.causal, groups))
        self.mid = nn.Sequential(*mid)
        blocks: list[nn.Module] = []
        for i in reversed(range(len(chans))):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(cin, chans[i], cfg.causal, groups))
                cin = chans[i]
            if i > 0:
                blocks.append(Upsample(cin, temporal=(i - 1) < cfg.temporal_downsamples, causal=cfg.causal))
        self.up = nn.Sequential(*blocks)
        self.norm_out = FrameGroupNorm(_num_groups(cin, groups), cin)
        self.conv_out = Conv25d(cin, cfg.in_channels, causal=cfg.causal)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


def _tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    stride = tile - overlap
    if stride < 1:
        raise ValueError("tile overlap must be smaller than the tile")
    starts = list(range(0, n - tile + 1, stride))
    if starts[-1] + tile < n:
        starts.append(n - tile)  # last tile slides back to full length; its overlap grows
    return starts


class TemporalAutoencoder(nn.Module):
    def __init__(self, cfg: TAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    # --- plain (untiled) ---
    def encode_dist(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) of the diagonal Gaussian posterior."""
        self.cfg.latent_frames(x.shape[2])
        s = self.cfg.spatial_compression
        if x.shape[-1] % s or x.shape[-2] % s:
            raise ValueError(f"height and width must be multiples of {s}, got {tuple(x.shape[-2:])}")
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_dist(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: reparameterised sample -> reconstruction. Returns (recon, mean, logvar)."""
        mean, logvar = self.encode_dist(x)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
        return self.decode(z), mean, logvar

    # --- tiled, for long videos ---
    def encode_tiled(self, x: torch.Tensor, tile_latents: int | None = None,
                     overlap_latents: int | None = None) -> torch.Tensor:
        """Encode frames [r·a, r·(b-1)] of each latent tile [a, b) separately and blend the
        latents linearly where tiles overlap."""
        n = self.cfg.latent_frames(x.shape[2])
        r = self.cfg.temporal_compression
        tile = tile_latents or self.cfg.tile_latents
        overlap = self.cfg.encode_overlap_latents if overlap_latents is None else overlap_latents
        if self.cfg.causal and overlap < 1 and n > tile:
            # a causal tile's first latent sees only its anchor frame; without overlap the r - 1
            # frames before each later tile would never be encoded
            raise ValueError("causal tiled encoding needs at least one latent of overlap")
        return _blend_tiles(lambda a, b: self.encode(x[:, :, r * a: r * (b - 1) + 1]),
                            n, tile, overlap, in_to_out=lambda a: a, out_len=n, warmup=self.cfg.causal)

    def decode_tiled(self, z: torch.Tensor, tile_latents: int | None = None,
                     overlap_latents: int | None = None) -> torch.Tensor:
        """Decode latent tiles [a, b) to frames [r·a, r·(b-1)] and blend the frames linearly
        where tiles overlap (Movie Gen: 32-frame tiles overlapping by 16 frames)."""
        n = z.shape[2]
        r = self.cfg.temporal_compression
        tile = tile_latents or self.cfg.tile_latents
        overlap = self.cfg.decode_overlap_latents if overlap_latents is None else overlap_latents
        return _blend_tiles(lambda a, b: self.decode(z[:, :, a:b]),
                            n, tile, overlap, in_to_out=lambda a: r * a, out_len=self.cfg.pixel_frames(n),
                            warmup=self.cfg.causal)


def _blend_tiles(run, n: int, tile: int, overlap: int, in_to_out, out_len: int, warmup: bool) -> torch.Tensor:
    """Run `run(a, b)` on each tile [a, b) of n positions; output of a tile starting at a covers
    out[in_to_out(a) : in_to_out(a) + len]. Overlaps are blended with linear ramps whose weights
    sum to one, so consistent tiles reproduce the untiled result and inconsistent ones fade.

    With a causal model only the start of a tile is wrong (it lacks history), so with `warmup`
    the first half of each overlap is a warm-up that keeps the previous tile's output, and the
    linear cross-fade happens over the second half. Without it (symmetric padding, where both
    tile edges are wrong) the cross-fade spans the whole overlap."""
    starts = _tile_starts(n, tile, overlap)
    spans = []
    for a in starts:
        y = run(a, min(a + tile, n))
        o = in_to_out(a)
        spans.append((o, o + y.shape[2], y))
    out = None
    weight_sum = None
    def ramp(m: int, like: torch.Tensor) -> torch.Tensor:
        """Weights of the later tile over an overlap of m positions (the earlier one gets 1 - w)."""
        skip = m // 2 if warmup else 0
        w = like.new_zeros(m)
        k = m - skip
        w[skip:] = torch.arange(1, k + 1, dtype=like.dtype, device=like.device) / (k + 1)
        return w

    for i, (o0, o1, y) in enumerate(spans):
        w = torch.ones(o1 - o0, dtype=y.dtype, device=y.device)
        if i > 0:  # ramp up over the overlap with the previous tile
            m = min(max(spans[i - 1][1] - o0, 0), o1 - o0)
            w[:m] = ramp(m, y)
        if i + 1 < len(spans):  # ramp down over the overlap with the next tile
            m = min(max(o1 - spans[i + 1][0], 0), o1 - o0)
            if m:
                w[-m:] = torch.minimum(w[-m:], 1 - ramp(m, y))
        if out is None:
            shape = list(y.shape)
            shape[2] = out_len
            out = y.new_zeros(shape)
            weight_sum = y.new_zeros(out_len)
        out[:, :, o0:o1] += y * w.view(1, 1, -1, 1, 1)
        weight_sum[o0:o1] += w
    return out / weight_sum.view(1, 1, -1, 1, 1)


# --- losses ---

def outlier_penalty_loss(z: torch.Tensor, r: float = 3.0) -> torch.Tensor:
    """Movie Gen's outlier penalty: penalise latent values more than r standard deviations from
    the per-channel mean, which otherwise show up as high-norm "spots" in decoded video.

    L = mean over positions of sum over channels of max(|z - mean| - r·std, 0).
    """
    dims = tuple(range(2, z.ndim))
    mean = z.mean(dim=dims, keepdim=True)
    std = z.std(dim=dims, keepdim=True)
    return F.relu((z - mean).abs() - r * std).sum(dim=1).mean()


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def tae_loss(x: torch.Tensor, recon: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
             cfg: TAEConfig, kl_weight: float = 1e-6, outlier_weight: float | None = None) -> dict[str, torch.Tensor]:
    """Reconstruction (L1, + L2 with ``cfg.mse_weight``) + KL + outlier penalty (``cfg.outlier_weight``;
    "large" in Movie Gen). Perceptual and adversarial terms need pretrained networks and belong to
    the training loop."""
    outlier_weight = cfg.outlier_weight if outlier_weight is None else outlier_weight
    rec = (x - recon).abs().mean()
    if cfg.mse_weight:
        rec = rec + cfg.mse_weight * (x - recon).pow(2).mean()
    kl = kl_loss(mean, logvar)
    opl = outlier_penalty_loss(mean, cfg.outlier_r)
    return {"loss": rec + kl_weight * kl + outlier_weight * opl, "recon": rec, "kl": kl, "outlier": opl}


def pad_frames_to_valid(x: torch.Tensor, temporal_compression: int) -> torch.Tensor:
    """Repeat the last frame so that T = 1 + r·k (what the TAE accepts)."""
    t = x.shape[2]
    target = 1 + math.ceil((t - 1) / temporal_compression) * temporal_compression
    if target == t:
        return x
    return torch.cat([x, x[:, :, -1:].expand(-1, -1, target - t, -1, -1)], dim=2)
