"""Prompt -> video latents (flow matching) -> TAE decode -> frames (+ audio) -> mp4.

Audio: the audio model generates normalised log-mel frames conditioned on the generated video's
latents and the prompt; they are turned into a waveform without a vocoder by Griffin-Lim phase
reconstruction (models/audio_model.py: LogMel.inverse). The mp4 holds an H.264 (yuv420p) video
stream and an AAC audio stream cut to exactly the video's duration, both starting at 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from reelflow.models.audio_model import LogMel, generate_audio, video_conditioning
from reelflow.models.configs import SampleConfig
from reelflow.models.flow_matching import euler_sample, guided_velocity, resolution_shift
from reelflow.training.captions import with_rate
from reelflow.training.checkpoint import GenerationModels, load_checkpoint

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class GenerationResult:
    path: Path
    num_frames: int
    fps: int
    width: int
    height: int
    duration_s: float
    has_audio: bool
    sample_rate: int | None


def conditioning_prompt(prompt: str, sample: SampleConfig) -> str:
    """The text the model is conditioned on: the prompt, behind the ``FPS-<n>`` token of the rate
    the model samples at when it was trained with one (Movie Gen prepends it at inference too). A
    prompt that brings its own token keeps it."""
    return with_rate(prompt, sample.fps) if sample.fps_token else prompt


def num_video_frames(seconds: float, fps: int, temporal_compression: int) -> int:
    """Frames for `seconds`, rounded up to the TAE's 1 + r·k frame grid."""
    frames = max(1, round(seconds * fps))
    k = math.ceil((frames - 1) / temporal_compression)
    return 1 + k * temporal_compression


@torch.no_grad()
def generate(
    checkpoint: str | Path | GenerationModels,
    prompt: str,
    out: str | Path,
    seconds: float | None = None,
    seed: int = 0,
    steps: int | None = None,
    guidance_scale: float | None = None,
    progress: Progress | None = None,
) -> GenerationResult:
    models = checkpoint if isinstance(checkpoint, GenerationModels) else load_checkpoint(checkpoint)
    models.eval()
    cfg = models.config
    if seconds is not None and seconds <= 0:
        raise ValueError("seconds must be positive")
    report = progress or (lambda stage, done, total: None)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    # --- video latents ---
    r, s = cfg.tae.temporal_compression, cfg.tae.spatial_compression
    fps, height, width = cfg.sample.fps, cfg.sample.height, cfg.sample.width
    # By default the length the model was trained on (a stage checkpoint records it), else 2 s.
    if seconds is None:
        frames = cfg.sample.frames or num_video_frames(2.0, fps, r)
        seconds = frames / fps
    else:
        frames = num_video_frames(seconds, fps, r)
    lt, lh, lw = cfg.tae.latent_frames(frames), height // s, width // s
    pt, ph, pw = cfg.video.patch_size
    if lt // pt > cfg.video.max_frames // pt:
        raise ValueError(f"{seconds} s needs {lt} latent frames; this model has positions for "
                         f"{cfg.video.max_frames} (at most {cfg.tae.pixel_frames(cfg.video.max_frames) / fps:.2f} s)")
    text, text_mask = models.text([conditioning_prompt(prompt, cfg.sample)])
    cond = dict(text=text, text_mask=text_mask)
    uncond = dict(text=torch.zeros_like(text[:, :1]), text_mask=None)  # zeroed text = the dropped condition
    # noise from a CPU generator, then moved: the same seed gives the same sample on any device
    device = next(models.video.parameters()).device
    x0 = torch.randn(1, cfg.tae.latent_channels, lt, lh, lw, generator=gen).to(device)
    n_steps = steps or cfg.flow.num_steps
    scale = cfg.flow.guidance_scale if guidance_scale is None else guidance_scale
    num_tokens = (lt // pt) * (lh // ph) * (lw // pw)
    shift = resolution_shift(num_tokens, cfg.flow.shift_base_tokens) if cfg.flow.use_resolution_shift else 1.0
    latents = euler_sample(guided_velocity(models.video, cond, uncond, scale), x0, n_steps, shift=shift,
                           linear_reference_steps=cfg.flow.linear_reference_steps,
                           callback=lambda i, n: report("video", i, n))

    # --- decode ---
    report("decode", 0, 1)
    z = latents / cfg.tae.latent_scale
    video = models.tae.decode_tiled(z) if lt > cfg.tae.tile_latents else models.tae.decode(z)
    pixels = ((video[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (3, T, H, W)
    rgb = pixels.permute(1, 2, 3, 0).contiguous().cpu().numpy()
    report("decode", 1, 1)

    # --- audio ---
    duration = frames / fps
    wave = None
    sample_rate = None
    if models.audio is not None:
        sample_rate = models.audio.cfg.sample_rate
        wave = soundtrack(models, video.clamp(-1, 1), fps, text, text_mask, gen, steps=steps, latents=latents,
                          progress=report)

    report("mux", 0, 1)
    path = write_mp4(out, rgb, fps, wave, sample_rate)
    report("mux", 1, 1)
    return GenerationResult(path=path, num_frames=frames, fps=fps, width=width, height=height,
                            duration_s=duration, has_audio=wave is not None, sample_rate=sample_rate)


@torch.no_grad()
def soundtrack(models: GenerationModels, video: torch.Tensor, fps: float, text: torch.Tensor,
               text_mask: torch.Tensor | None, gen: torch.Generator, steps: int | None = None,
               guidance_scale: float | None = None, latents: torch.Tensor | None = None,
               progress: Progress | None = None) -> np.ndarray:
    """Mono audio (N,) float32 for ``video`` (1, 3, T, H, W) in [-1, 1] at ``fps``: the audio model's
    log-mel frames conditioned on the video and the text, vocoded by Griffin-Lim, peak capped at 0.9
    (never raised: a quiet result stays quiet). ``latents``: the video's scaled TAE latents, for an
    audio model conditioned on them (encoded here when not given)."""
    report = progress or (lambda stage, done, total: None)
    acfg = models.audio.cfg
    n_samples = round(video.shape[2] / fps * acfg.sample_rate)
    mel_fn = LogMel(acfg)
    n_audio_frames = mel_fn.num_frames(n_samples)
    if acfg.video_features == "latents" and latents is None:
        latents = models.tae.encode(video) * models.config.tae.latent_scale
    feats = video_conditioning(acfg, fps, n_audio_frames, frames=video, latents=latents)
    mel = generate_audio(models.audio, n_audio_frames, feats, text, text_mask, num_steps=steps,
                         guidance_scale=guidance_scale, generator=gen, callback=lambda i, n: report("audio", i, n))
    report("vocode", 0, 1)
    wave = mel_fn.inverse(mel.cpu(), n_samples, generator=gen)[0]  # vocoded on the CPU, with the CPU generator
    peak = wave.abs().max().item()
    if peak > 0.9:  # an untrained model can be arbitrarily loud; never clip
        wave = wave * (0.9 / peak)
    report("vocode", 1, 1)
    return wave.cpu().numpy().astype(np.float32)


def write_mp4(path: str | Path, frames: np.ndarray, fps: int, audio: np.ndarray | None = None,
              sample_rate: int | None = None, crf: int = 18) -> Path:
    """Mux uint8 RGB frames (T, H, W, 3) as H.264 yuv420p and, if given, mono float audio
    (N,) in [-1, 1] as AAC. Both streams start at pts 0."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs even width and height, got {w}x{h}")
    import av  # imported here: the sampler itself needs no PyAV (GPU benchmarks run without it)

    with av.open(str(path), mode="w") as container:
        vstream = container.add_stream("libx264", rate=Fraction(fps, 1))
        vstream.width, vstream.height, vstream.pix_fmt = w, h, "yuv420p"
        vstream.options = {"crf": str(crf), "preset": "veryfast"}
        astream = None
        if audio is not None:
            if sample_rate is None:
                raise ValueError("sample_rate is required with audio")
            astream = container.add_stream("aac", rate=sample_rate, layout="mono")
            astream.bit_rate = 96_000
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            frame.pts = i
            for packet in vstream.encode(frame):
                container.mux(packet)
        for packet in vstream.encode():
            container.mux(packet)
        if astream is not None:
            samples = np.clip(audio, -1.0, 1.0).astype(np.float32).reshape(1, -1)
            chunk = 1024  # AAC frame size
            for start in range(0, samples.shape[1], chunk):
                piece = np.ascontiguousarray(samples[:, start:start + chunk])
                aframe = av.AudioFrame.from_ndarray(piece, format="fltp", layout="mono")
                aframe.sample_rate = sample_rate
                aframe.pts = start
                aframe.time_base = Fraction(1, sample_rate)
                for packet in astream.encode(aframe):
                    container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)
    return path
