"""One training loss per model kind, on one batch of pixels (+ captions, + audio).

Pure PyTorch, no Ray: the worker loop (training/loop.py) calls these, and the tests call them
directly. Each stage trains one module and keeps the others frozen (Movie Gen trains the TAE
first, then the video model on its latents, then the audio model conditioned on video).

- tae:   L1 (+ L2) reconstruction + KL + outlier penalty, weights from the TAE config (models/tae.py:tae_loss)
- video: flow matching on TAE latents x latent_scale, text dropped with p = cond_dropout (for
         classifier-free guidance); the module trained is the transformer plus the text encoder's
         trainable parts (projection, byte encoder)
- audio: flow matching on log-mel frames with masked context and Movie Gen's condition dropout,
         conditioned on the frozen TAE's latents of the same clip and the frozen text encoder
"""

from __future__ import annotations

import torch
import torch.nn as nn

from reelflow.models.audio_model import AudioConfig, LogMel, audio_flow_loss, video_conditioning
from reelflow.models.flow_matching import flow_matching_loss
from reelflow.models.tae import tae_loss
from reelflow.training.checkpoint import GenerationModels


class VideoWithText(nn.Module):
    """The video transformer and the trainable text encoder as one module, so one optimizer and
    one DDP wrapper cover both. The frozen backbone inside `text` has requires_grad False."""

    def __init__(self, video: nn.Module, text: nn.Module):
        super().__init__()
        self.video = video
        self.text = text

    def forward(self, xt: torch.Tensor, t: torch.Tensor, captions: list[str],
                keep_text: torch.Tensor) -> torch.Tensor:
        text, text_mask = self.text(captions)
        text = text * keep_text.view(-1, 1, 1).to(text)  # a dropped condition is zeroed (models/README.md)
        return self.video(xt, t, text, text_mask)


def trainable_module(models: GenerationModels, kind: str) -> nn.Module:
    """The module a stage trains; everything else is frozen (requires_grad False, eval mode)."""
    for m in (models.tae, models.video, models.text, models.audio):
        if m is not None:
            m.requires_grad_(False).eval()
    if kind == "tae":
        module: nn.Module = models.tae
    elif kind == "video":
        module = VideoWithText(models.video, models.text)
    elif kind == "audio":
        if models.audio is None:
            raise ValueError("the model config has no audio model")
        module = models.audio
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    module.requires_grad_(True).train()
    if kind == "video" and models.text.backbone is not None:
        models.text.backbone.requires_grad_(False).eval()  # the backbone stays frozen
    return module


@torch.no_grad()
def encode_latents(models: GenerationModels, pixels: torch.Tensor) -> torch.Tensor:
    """Frozen TAE posterior mean, scaled to unit variance for the flow (latent_scale)."""
    return models.tae.encode(pixels) * models.config.tae.latent_scale


def num_tokens(models: GenerationModels, latents: torch.Tensor) -> int:
    pt, ph, pw = models.config.video.patch_size
    _, _, t, h, w = latents.shape
    return (t // pt) * (h // ph) * (w // pw)


def tae_step(module: nn.Module, models: GenerationModels, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    recon, mean, logvar = module(pixels)
    return tae_loss(pixels, recon, mean, logvar, models.config.tae)


def video_step(module: nn.Module, models: GenerationModels, pixels: torch.Tensor, captions: list[str],
               generator: torch.Generator, cond_dropout: float | None = None,
               latents: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """`latents`: the batch already encoded (`encode_latents`), e.g. from a cache; else encoded here."""
    x1 = encode_latents(models, pixels) if latents is None else latents
    p_drop = models.config.flow.cond_dropout if cond_dropout is None else cond_dropout
    keep = torch.rand(x1.shape[0], generator=generator) >= p_drop
    keep = keep.to(x1.device)
    loss = flow_matching_loss(lambda xt, t: module(xt, t, captions, keep), x1, models.config.flow,
                              num_tokens=num_tokens(models, x1), generator=generator)
    return {"loss": loss}


def audio_step(module: nn.Module, models: GenerationModels, pixels: torch.Tensor, captions: list[str],
               audio: torch.Tensor, mel: LogMel, generator: torch.Generator, fps: float) -> dict[str, torch.Tensor]:
    """``fps``: the rate ``pixels`` were sampled at (frame-level video features are placed by time)."""
    acfg = models.config.audio
    with torch.no_grad():
        frames = mel(audio)
        latents = encode_latents(models, pixels) if acfg.video_features == "latents" else None
        feats = video_conditioning(acfg, fps, frames.shape[-1], frames=pixels, latents=latents)
        text, text_mask = models.text(captions)
    loss = audio_flow_loss(module, frames, feats, text, text_mask, models.config.flow,
                           generator=generator)
    return {"loss": loss}


def audio_frames(acfg: AudioConfig, frames: int, fps: float) -> int:
    """Log-mel frames of the audio under `frames` video frames at `fps`."""
    return round(frames / fps * acfg.sample_rate) // acfg.hop_length + 1


def check_audio_span(models: GenerationModels, frames: int, fps: float) -> int:
    """Audio frames for a clip of `frames` at `fps`; raises if they exceed the model's window."""
    acfg = models.config.audio
    if acfg is None:
        raise ValueError("the model config has no audio model")
    n = audio_frames(acfg, frames, fps)
    if n > acfg.window_frames:
        raise ValueError(f"{frames} frames at {fps} fps make {n} audio frames; the audio model's window is "
                         f"{acfg.window_frames} (use fewer frames or a higher fps in the audio stage)")
    return n
