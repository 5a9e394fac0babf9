"""Video-to-audio flow-matching transformer (Movie Gen Audio-style) over log-mel frames.

Representation: normalised log-mel spectrogram frames, not a learned audio autoencoder.
Movie Gen uses DAC-VAE latents (128 channels at 25 Hz); no such weights can be fetched here,
and a log-mel front end needs no weights at all, is exactly reproducible, and is inverted
without a vocoder by Griffin-Lim phase reconstruction (`LogMel.inverse`). The published config
keeps Movie Gen's shape — 128 channels at 25 Hz — so the transformer and its compute match;
swapping in a codec later changes only this front end.

Per audio frame the model sees [x_t ; masked audio context ; mask] (channel concatenation),
adds frame-aligned video features, and cross-attends to text. The masked context is what
lets one model generate from scratch (all masked), infill (a gap masked) and extend (the
future masked) — and long-form audio is windows that extend each other, blended with
triangular weights where they overlap (Movie Gen).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from reelflow.models.flow_matching import FlowMatchingConfig, euler_sample, flow_matching_loss, guided_velocity
from reelflow.models.layers import Block, FinalLayer, RMSNorm, TimestepEmbedder, init_linear_weights


@dataclass
class AudioConfig:
    # front end
    sample_rate: int = 48000  # Movie Gen audio is 48 kHz
    n_fft: int = 4096
    hop_length: int = 1920  # 48000 / 1920 = 25 frames/s, Movie Gen's latent rate
    n_mels: int = 128  # = DAC-VAE's 128 channels in Movie Gen
    log_floor: float = 1e-5
    norm_mean: float = -5.0  # log-mel values are mapped by (x - mean) / std to roughly unit scale
    norm_std: float = 2.5
    # transformer (published values: Movie Gen Audio 13B)
    dim: int = 4608
    n_layers: int = 36
    n_heads: int = 36
    ffn_dim: int = 18432  # = 4·dim: a plain GELU MLP ratio, unlike the video model's SwiGLU 8/3
    ffn_kind: str = "gelu"
    video_dim: int = 1024  # per-frame video feature width
    # What the video condition is (video_conditioning): "latents" pools TAE latents per latent frame
    # (C·grid² wide; one feature per 4-8 video frames); "frames" pools each decoded video frame and its
    # change from the one before (6·grid² wide), resampled onto audio frames by time, so a sound can be
    # placed to the video frame it belongs to.
    video_features: str = "latents"
    video_grid: int = 2
    text_dim: int = 4096
    window_frames: int = 750  # 30 s at 25 Hz (Movie Gen pre-trains on sequences up to 30 s)
    overlap_frames: int = 125  # 5 s of overlap between long-form windows
    norm_eps: float = 1e-6
    qk_norm: bool = True
    guidance_scale: float = 3.0  # Movie Gen Audio
    num_steps: int = 64  # Movie Gen Audio (midpoint solver there; Euler here)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length


class LogMel(nn.Module):
    """Waveform <-> normalised log-mel frames. Pure tensor ops (torch.stft), no weights."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels)
        self.register_buffer("fb", fb, persistent=False)  # (n_mels, n_freq)
        self.register_buffer("fb_pinv", torch.linalg.pinv(fb), persistent=False)

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.cfg.hop_length + 1  # torch.stft(center=True)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, n_mels, T)."""
        spec = torch.stft(wave, self.cfg.n_fft, self.cfg.hop_length, window=self.window,
                          center=True, return_complex=True).abs()
        mel = self.fb @ spec
        return (torch.log(mel.clamp_min(self.cfg.log_floor)) - self.cfg.norm_mean) / self.cfg.norm_std

    def inverse(self, logmel: torch.Tensor, num_samples: int, n_iter: int = 32,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, n_mels, T) -> (B, num_samples) by least-squares mel inversion + Griffin-Lim."""
        mel = torch.exp(logmel * self.cfg.norm_std + self.cfg.norm_mean)
        mag = (self.fb_pinv @ mel).clamp_min(0.0)
        phase = torch.rand(mag.shape, generator=generator, device=mag.device) * 2 * math.pi
        spec = torch.polar(mag, phase)
        kw = dict(n_fft=self.cfg.n_fft, hop_length=self.cfg.hop_length, window=self.window, center=True)
        for _ in range(n_iter):
            wave = torch.istft(spec, length=num_samples, **kw)
            rebuilt = torch.stft(wave, return_complex=True, **kw)
            spec = torch.polar(mag, torch.angle(rebuilt))
        return torch.istft(spec, length=num_samples, **kw)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """Triangular HTK-mel filterbank, (n_mels, n_fft // 2 + 1)."""
    def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    n_freq = n_fft // 2 + 1
    freqs = torch.linspace(0, sample_rate / 2, n_freq)
    mels = torch.linspace(hz_to_mel(torch.tensor(0.0)), hz_to_mel(torch.tensor(sample_rate / 2)), n_mels + 2)
    edges = mel_to_hz(mels)
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lower) / (center - lower)
    down = (upper - freqs[None]) / (upper - center)
    return torch.clamp(torch.minimum(up, down), min=0.0)


class AudioTransformer(nn.Module):
    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.n_mels
        self.in_proj = nn.Linear(2 * c + 1, cfg.dim)  # [x_t, context, mask]
        self.video_proj = nn.Linear(cfg.video_dim, cfg.dim)
        self.pos = nn.Parameter(torch.randn(cfg.window_frames, cfg.dim) * 0.02)
        self.time_embed = TimestepEmbedder(cfg.dim)
        self.time_mod = nn.Linear(cfg.dim, 6 * cfg.dim)
        self.text_proj = nn.Linear(cfg.text_dim, cfg.dim, bias=False)
        self.text_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.n_heads, cfg.ffn_dim, cfg.ffn_kind, cfg.norm_eps, cfg.qk_norm)
            for _ in range(cfg.n_layers)
        )
        self.final = FinalLayer(cfg.dim, c, cfg.norm_eps)
        init_linear_weights(self)
        self.final.zero_init()
        nn.init.zeros_(self.time_mod.weight)
        nn.init.zeros_(self.time_mod.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, mask: torch.Tensor,
                video: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x, context: (B, C, T) audio frames; mask: (B, 1, T), 1 = to generate;
        video: (B, Tv, video_dim) features over the same time span (resampled to T here);
        text: (B, L, text_dim). Returns the velocity (B, C, T)."""
        b, _, n = x.shape
        if n > self.pos.shape[0]:
            raise ValueError(f"{n} frames exceed the window of {self.pos.shape[0]}; use generate_long")
        h = self.in_proj(torch.cat([x, context * (1 - mask), mask], dim=1).transpose(1, 2))
        h = h + self.video_proj(align_video(video, n)) + self.pos[:n]  # frame-aligned video (Movie Gen)
        t_emb = self.time_embed(t)
        mod = self.time_mod(F.silu(t_emb)).view(b, 6, -1)
        ctx = self.text_norm(self.text_proj(text))
        for block in self.blocks:
            h = block(h, mod, ctx, text_mask)
        return self.final(h, t_emb).transpose(1, 2)


def align_video(video: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Linearly resample per-frame video features (B, Tv, D) onto num_frames audio frames."""
    if video.shape[1] == num_frames:
        return video
    return F.interpolate(video.transpose(1, 2), size=num_frames, mode="linear",
                         align_corners=video.shape[1] > 1).transpose(1, 2)


def video_features_from_latents(latents: torch.Tensor, grid: int = 2) -> torch.Tensor:
    """TAE latents (B, C, T, H, W) -> per-latent-frame features (B, T, C·grid²) by average pooling
    to a grid x grid layout: cheap, needs no extra weights, keeps coarse 'where' information."""
    pooled = F.adaptive_avg_pool3d(latents, (latents.shape[2], grid, grid))
    return pooled.permute(0, 2, 1, 3, 4).flatten(2)


def video_features_from_frames(frames: torch.Tensor, grid: int = 4) -> torch.Tensor:
    """Video frames (B, 3, T, H, W) in [-1, 1] -> per-frame features (B, T, 6·grid²): each frame
    average-pooled to grid x grid RGB (what is where), and the same pooling of its absolute change
    from the frame before (what moved; zero for the first frame). Weight-free, like the latent
    pooling, but one feature per video frame: a bounce seen in frame k can be heard at frame k."""
    b, c, t, _, _ = frames.shape
    diff = torch.cat([torch.zeros_like(frames[:, :, :1]), (frames[:, :, 1:] - frames[:, :, :-1]).abs()], dim=2)
    pooled = F.adaptive_avg_pool3d(torch.cat([frames, diff], dim=1), (t, grid, grid))  # (B, 6, T, g, g)
    return pooled.permute(0, 2, 1, 3, 4).flatten(2)


def frames_to_audio_frames(feats: torch.Tensor, fps: float, num_frames: int, frame_rate: float) -> torch.Tensor:
    """Per-video-frame features (B, T, D) -> (B, num_frames, D) on the audio frames, by time: audio
    frame j is centred at j / frame_rate s (torch.stft, center=True), where video frame j·fps/frame_rate
    shows (linear between frames, held at the ends). ``align_video`` instead stretches T features
    over the span, which puts frame k of T up to a frame late."""
    t = feats.shape[1]
    pos = (torch.arange(num_frames, device=feats.device, dtype=torch.float32) * (fps / frame_rate)).clamp(0, t - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=t - 1)
    w = (pos - lo).view(1, -1, 1).to(feats)
    return feats[:, lo] * (1 - w) + feats[:, hi] * w


def video_conditioning(cfg: AudioConfig, fps: float, num_frames: int, frames: torch.Tensor | None = None,
                       latents: torch.Tensor | None = None) -> torch.Tensor:
    """The audio model's video condition (B, Tv, video_dim) for a clip at ``fps`` whose audio has
    ``num_frames`` frames: from its video frames (B, 3, T, H, W) or its TAE latents (B, C, t, h, w),
    as ``cfg.video_features`` says. "frames" features come already on the audio frames."""
    if cfg.video_features == "frames":
        if frames is None:
            raise ValueError("this audio model is conditioned on video frames; none were given")
        feats = frames_to_audio_frames(video_features_from_frames(frames, cfg.video_grid), fps, num_frames,
                                       cfg.frame_rate)
    elif cfg.video_features == "latents":
        if latents is None:
            raise ValueError("this audio model is conditioned on TAE latents; none were given")
        feats = video_features_from_latents(latents, cfg.video_grid)
    else:
        raise ValueError(f"unknown video_features {cfg.video_features!r}: 'frames' or 'latents'")
    if feats.shape[-1] != cfg.video_dim:
        raise ValueError(f"video features are {feats.shape[-1]} wide; the audio model takes {cfg.video_dim} "
                         f"(video_dim; {cfg.video_features} at grid {cfg.video_grid})")
    return feats


def sample_audio_mask(b: int, n: int, generator: torch.Generator | None = None,
                      p_full: float = 0.5, min_frac: float = 0.75) -> torch.Tensor:
    """Training masks (B, 1, n), 1 = generate. Full mask with p = 0.5, otherwise a contiguous
    span covering 75-100% of the frames (Movie Gen)."""
    mask = torch.ones(b, 1, n)
    for i in range(b):
        if torch.rand((), generator=generator) < p_full:
            continue
        frac = min_frac + (1 - min_frac) * torch.rand((), generator=generator).item()
        span = max(1, round(frac * n))
        start = int(torch.randint(0, n - span + 1, (), generator=generator))
        mask[i, :, :] = 0
        mask[i, :, start:start + span] = 1
    return mask


def audio_flow_loss(model: AudioTransformer, audio: torch.Tensor, video: torch.Tensor, text: torch.Tensor,
                    text_mask: torch.Tensor | None, flow: FlowMatchingConfig,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Flow-matching loss on the masked frames with Movie Gen's condition dropout:
    all conditions dropped with p = 0.2, else text and video each dropped with p = 0.1.
    A dropped condition is zeroed: zero text features give zero keys and values in
    cross-attention, so "no text" is the same whatever the prompt length."""
    b, _, n = audio.shape
    mask = sample_audio_mask(b, n, generator).to(audio)
    u = torch.rand(b, 3, generator=generator)
    drop_all = u[:, 0] < 0.2
    drop_text = (drop_all | (u[:, 1] < 0.1)).to(audio.device)
    drop_video = (drop_all | (u[:, 2] < 0.1)).to(audio.device)
    video = video * (~drop_video).view(-1, 1, 1).to(video)
    text = text * (~drop_text).view(-1, 1, 1).to(text)
    context = audio * (1 - mask)

    def velocity(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(xt, t, context, mask, video, text, text_mask)

    return flow_matching_loss(velocity, audio, flow, generator=generator, weight=mask)


def triangular_weights(n: int, device: torch.device | None = None) -> torch.Tensor:
    """Triangle over a window, strictly positive: (i + 1) / (half + 1) rising then falling."""
    i = torch.arange(n, device=device, dtype=torch.float32)
    return torch.minimum(i + 1, n - i) / ((n + 1) / 2)


def window_starts(total: int, window: int, overlap: int) -> list[int]:
    if total <= window:
        return [0]
    hop = window - overlap
    starts = list(range(0, total - window + 1, hop))
    if starts[-1] + window < total:
        starts.append(total - window)
    return starts


def blend_windows(windows: list[torch.Tensor], starts: list[int], total: int) -> torch.Tensor:
    """Overlap-add (B, C, W) windows with triangular weights, normalised by the weight sum.
    Near a window's edge its weight goes to ~0, so a neighbour dominates there: no seam."""
    b, c, _ = windows[0].shape
    out = windows[0].new_zeros(b, c, total)
    wsum = windows[0].new_zeros(total)
    for y, s in zip(windows, starts, strict=True):
        w = triangular_weights(y.shape[-1], y.device).to(y.dtype)
        out[:, :, s:s + y.shape[-1]] += y * w
        wsum[s:s + y.shape[-1]] += w
    return out / wsum


@torch.no_grad()
def generate_audio(model: AudioTransformer, num_frames: int, video: torch.Tensor, text: torch.Tensor,
                   text_mask: torch.Tensor | None = None, num_steps: int | None = None,
                   guidance_scale: float | None = None, generator: torch.Generator | None = None,
                   callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Long-form audio (B, C, num_frames): window after window, each conditioned on the previous
    window's output over their overlap (masked context = extension), blended with triangular
    weights. `video` (B, Tv, D) spans the whole duration and is sliced per window. The
    unconditional branch of guidance uses zero video features and zero text, as in training."""
    cfg = model.cfg
    window = min(cfg.window_frames, num_frames)
    starts = window_starts(num_frames, window, cfg.overlap_frames)
    steps = num_steps or cfg.num_steps
    scale = cfg.guidance_scale if guidance_scale is None else guidance_scale
    b = video.shape[0]
    full_video = align_video(video, num_frames)
    device = video.device
    windows: list[torch.Tensor] = []
    done = 0
    total_steps = steps * len(starts)
    for k, s in enumerate(starts):
        context = torch.zeros(b, cfg.n_mels, window, device=device)
        mask = torch.ones(b, 1, window, device=device)
        if k > 0:  # the part already generated becomes context; only the rest is generated
            prev = blend_windows(windows, starts[:k], starts[k - 1] + window)
            known = prev.shape[-1] - s
            context[:, :, :known] = prev[:, :, s:]
            mask[:, :, :known] = 0
        vid = full_video[:, s:s + window]
        cond = dict(context=context, mask=mask, video=vid, text=text, text_mask=text_mask)
        uncond = dict(context=context, mask=mask, video=torch.zeros_like(vid), text=torch.zeros_like(text[:, :1]),
                      text_mask=None)
        x0 = torch.randn(b, cfg.n_mels, window, generator=generator).to(device)

        def step_cb(i: int, n: int, offset: int = done) -> None:
            if callback is not None:
                callback(offset + i, total_steps)

        windows.append(euler_sample(guided_velocity(model, cond, uncond, scale), x0, steps, callback=step_cb))
        done += steps
    return blend_windows(windows, starts, num_frames)
