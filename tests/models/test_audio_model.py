import numpy as np
import torch
import torch.nn as nn

from reelflow.models.audio_model import (
    AudioTransformer,
    LogMel,
    audio_flow_loss,
    blend_windows,
    generate_audio,
    sample_audio_mask,
    triangular_weights,
    video_conditioning,
    window_starts,
)
from reelflow.models.configs import tiny
from reelflow.models.flow_matching import FlowMatchingConfig
from reelflow.training.synthetic_shapes import ShapeClip, render_clip


def test_forward_shape_and_mask_conditioning():
    cfg = tiny().audio
    torch.manual_seed(0)
    model = AudioTransformer(cfg)
    with torch.no_grad():  # leave the zero init so the output depends on the inputs
        model.final.proj.weight.normal_(0, 0.1)
        model.time_mod.weight.normal_(0, 0.02)
    model.eval()
    x, ctx = torch.randn(2, cfg.n_mels, 40), torch.randn(2, cfg.n_mels, 40)
    video, text = torch.randn(2, 7, cfg.video_dim), torch.randn(2, 3, cfg.text_dim)
    full = torch.ones(2, 1, 40)
    with torch.no_grad():
        v = model(x, torch.rand(2), ctx, full, video, text)
        assert v.shape == (2, cfg.n_mels, 40)
        t = torch.full((2,), 0.3)  # fully masked: the context is hidden from the model
        a = model(x, t, ctx, full, video, text)
        b = model(x, t, torch.randn_like(ctx), full, video, text)
        torch.testing.assert_close(a, b)
        half = full.clone()
        half[:, :, :20] = 0  # first half known: now the context matters
        c = model(x, t, ctx, half, video, text)
        d = model(x, t, torch.randn_like(ctx), half, video, text)
        assert (c - d).abs().max() > 1e-4
        e = model(x, t, ctx, full, torch.randn_like(video), text)
        assert (a - e).abs().max() > 1e-4  # video features condition the output


def test_training_masks_follow_movie_gen():
    g = torch.Generator().manual_seed(0)
    m = sample_audio_mask(400, 100, g)
    frac = m.mean(dim=(1, 2))
    full = (frac == 1).float().mean().item()
    assert 0.4 < full < 0.6  # full mask with p = 0.5
    assert frac.min() >= 0.74  # otherwise 75-100% masked
    assert ((m[:, 0, 1:] - m[:, 0, :-1]).abs().sum(dim=1) <= 2).all()  # one contiguous span


def test_audio_loss_falls_when_overfitting_one_clip():
    cfg = tiny().audio
    torch.manual_seed(0)
    model = AudioTransformer(cfg)
    _, wave, _ = render_clip(ShapeClip("red", "square", "right", speed=1.5), fps=8, seconds=1.0,
                             sample_rate=cfg.sample_rate)
    mel = LogMel(cfg)(torch.from_numpy(wave)[None])[:, :, : cfg.window_frames]
    video, text = torch.randn(1, 8, cfg.video_dim), torch.randn(1, 3, cfg.text_dim)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        loss = audio_flow_loss(model, mel.expand(8, -1, -1), video.expand(8, -1, -1), text.expand(8, -1, -1), None,
                               FlowMatchingConfig(), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(f"\naudio flow loss {np.mean(losses[:10]):.3f} -> {np.mean(losses[-10:]):.3f}")
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])


def test_logmel_griffin_lim_round_trip():
    cfg = tiny().audio
    _, wave, bounces = render_clip(ShapeClip("red", "circle", "right", speed=1.5), fps=8, seconds=1.0,
                                   sample_rate=cfg.sample_rate)
    assert bounces
    mel_fn = LogMel(cfg)
    x = torch.from_numpy(wave)[None]
    mel = mel_fn(x)
    assert mel.shape == (1, cfg.n_mels, mel_fn.num_frames(x.shape[1]))
    rebuilt = mel_fn.inverse(mel, x.shape[1], n_iter=32, generator=torch.Generator().manual_seed(0))
    assert rebuilt.shape == x.shape
    def lin(w):
        return torch.stft(w, cfg.n_fft, cfg.hop_length, window=torch.hann_window(cfg.n_fft), return_complex=True).abs()

    # spectral convergence: magnitude error relative to the magnitude (phase may differ)
    sc = ((lin(rebuilt) - lin(x)).norm() / lin(x).norm()).item()
    print(f"\nGriffin-Lim spectral convergence {sc:.3f}")
    assert sc < 0.5


def test_triangular_blend_is_seamless():
    total, window, overlap = 100, 40, 16
    starts = window_starts(total, window, overlap)
    assert starts[0] == 0 and starts[-1] + window == total
    # consistent windows (slices of one signal) are reproduced exactly
    signal = torch.randn(1, 3, total)
    torch.testing.assert_close(blend_windows([signal[..., s:s + window] for s in starts], starts, total), signal)
    # inconsistent windows (constants 0, 1, 2...) cross-fade instead of jumping
    windows = [torch.full((1, 1, window), float(k)) for k in range(len(starts))]
    blended = blend_windows(windows, starts, total)[0, 0]
    max_jump = blended.diff().abs().max().item()
    hard = torch.cat([windows[k][0, 0, : (starts[k + 1] - starts[k]) if k + 1 < len(starts) else window]
                      for k in range(len(starts))]).diff().abs().max().item()
    print(f"\nblend: max frame-to-frame jump {max_jump:.3f} vs hard concatenation {hard:.3f}")
    assert hard == 1.0 and max_jump < 0.25
    assert (triangular_weights(window) > 0).all()


class OracleAudio(nn.Module):
    """Knows the exact target: mel = a fixed linear map of the frame-aligned video features.
    Its velocity is exact, so each window lands on the target of its own slice; any mistake in
    window slicing, context passing or blending shows up as a seam or a mismatch."""

    def __init__(self, cfg, proj):
        super().__init__()
        self.cfg, self.proj, self.sigma = cfg, proj, 1e-5
        self.context_checks = 0

    def forward(self, x, t, context, mask, video, text, text_mask=None):
        target = (video @ self.proj).transpose(1, 2)  # (B, C, T)
        known = mask == 0
        if known.any() and video.abs().sum() > 0:
            # the already generated audio arrives as context over the overlap
            torch.testing.assert_close(context * known, target * known, atol=1e-3, rtol=1e-3)
            self.context_checks += 1
        x0 = (x - t.view(-1, 1, 1) * target) / (1 - (1 - self.sigma) * t.view(-1, 1, 1))
        return target - (1 - self.sigma) * x0


def test_long_form_windows_join_without_seams():
    cfg = tiny().audio
    total = 3 * cfg.window_frames  # 3 s of audio at the tiny rate: well past one window
    # smooth, slowly varying frame-aligned video features spanning the whole clip
    tt = torch.linspace(0, 1, total)
    video = torch.stack([torch.sin(2 * np.pi * (k + 1) * tt / 3) for k in range(cfg.video_dim)], dim=-1)[None]
    proj = torch.randn(cfg.video_dim, cfg.n_mels, generator=torch.Generator().manual_seed(0)) / cfg.video_dim**0.5
    oracle = OracleAudio(cfg, proj)
    y = generate_audio(oracle, total, video, torch.zeros(1, 1, cfg.text_dim), num_steps=6, guidance_scale=1.0,
                       generator=torch.Generator().manual_seed(0))
    target = (video @ proj).transpose(1, 2)
    starts = window_starts(total, cfg.window_frames, cfg.overlap_frames)
    assert len(starts) >= 4 and oracle.context_checks >= 6 * (len(starts) - 1)
    torch.testing.assert_close(y, target, atol=1e-3, rtol=1e-3)
    jumps = (y[0, :, 1:] - y[0, :, :-1]).norm(dim=0)
    target_jumps = (target[0, :, 1:] - target[0, :, :-1]).norm(dim=0)
    seams = [s - 1 for s in starts[1:]] + [s + cfg.window_frames - 1 for s in starts[:-1]]
    print(f"\nlong-form: {len(starts)} windows; jumps at window edges {jumps[seams].max():.4f} "
          f"vs the target's own {target_jumps[seams].max():.4f}")
    torch.testing.assert_close(jumps[seams], target_jumps[seams], atol=1e-3, rtol=1e-2)


def test_long_form_with_the_tiny_model_runs_past_one_window():
    cfg = tiny().audio
    torch.manual_seed(0)
    model = AudioTransformer(cfg).eval()
    total = 2 * cfg.window_frames + 10
    y = generate_audio(model, total, torch.randn(1, 5, cfg.video_dim), torch.randn(1, 3, cfg.text_dim),
                       num_steps=2, generator=torch.Generator().manual_seed(0))
    assert y.shape == (1, cfg.n_mels, total) and torch.isfinite(y).all()


def test_frame_features_place_a_change_at_its_time_on_the_audio_frames():
    """A frame that changes at video frame k shows in the audio-frame features at k / fps seconds, to
    within one audio frame (the latent pooling could not: one feature per 4 video frames)."""
    cfg = tiny().audio
    fps, t = 8, 9
    frames = -torch.ones(1, 3, t, 16, 16)
    frames[:, :, 6:, :8, :8] = 1.0  # a square appears top left at frame 6 and stays
    n = round(t / fps * cfg.sample_rate) // cfg.hop_length + 1
    feats = video_conditioning(cfg, fps, n, frames=frames)
    assert feats.shape == (1, n, cfg.video_dim)
    motion = feats[0, :, 3 * cfg.video_grid ** 2:].abs().sum(-1)  # the frame-change half
    peak_s = int(motion.argmax()) / cfg.frame_rate
    assert abs(peak_s - 6 / fps) <= 1 / cfg.frame_rate + 1e-6
    assert motion[: int(5 / fps * cfg.frame_rate)].max() == 0  # nothing moves before frame 5
    latent_cfg = tiny().audio
    latent_cfg.video_features = "latents"
    try:
        video_conditioning(latent_cfg, fps, n, frames=frames)
    except ValueError as e:
        assert "TAE latents" in str(e)
    else:
        raise AssertionError("a latent-conditioned model must not take frames silently")
