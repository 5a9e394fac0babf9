"""The tiny video model overfits one synthetic clip: flow-matching loss falls, and sampling from
noise with the prompt reproduces the clip's latents (and, decoded, its frames)."""

import torch

from reelflow.models.configs import tiny
from reelflow.models.flow_matching import euler_sample, flow_matching_loss, guided_velocity
from reelflow.models.tae import TemporalAutoencoder
from reelflow.models.video_transformer import VideoTransformer
from reelflow.training.synthetic_shapes import ShapeClip, render_clip


def test_tiny_video_model_overfits_one_clip(minilm_text_encoder):
    cfg = tiny(with_audio=False)
    torch.manual_seed(0)
    clip = ShapeClip("yellow", "square", "down and to the right", speed=0.8, size=0.3)
    rgb, _, _ = render_clip(clip, 32, 32, fps=8, num_frames=9)
    x = torch.from_numpy(rgb).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]  # (1, 3, 9, 32, 32)
    tae = TemporalAutoencoder(cfg.tae).eval()
    with torch.no_grad():
        z = tae.encode(x)  # (1, 8, 3, 8, 8)
        cfg.tae.latent_scale = 1.0 / z.std().item()  # as measured on data after TAE training
        x1 = z * cfg.tae.latent_scale  # unit-scale latents for the flow
        text, text_mask = minilm_text_encoder([clip.caption])

    model = VideoTransformer(cfg.video)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    batch = 8
    losses = []
    for _ in range(250):
        loss = flow_matching_loss(lambda xt, t: model(xt, t, text.expand(batch, -1, -1), text_mask.expand(batch, -1)),
                                  x1.expand(batch, -1, -1, -1, -1), cfg.flow, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20

    noise = torch.randn(x1.shape, generator=torch.Generator().manual_seed(1))
    velocity = guided_velocity(model, dict(text=text, text_mask=text_mask), dict(text=text, text_mask=text_mask), 1.0)
    sample = euler_sample(velocity, noise, num_steps=20)
    rel = ((sample - x1).norm() / x1.norm()).item()
    with torch.no_grad():
        frames = tae.decode(sample / cfg.tae.latent_scale)
        target_frames = tae.decode(z)
    pix = (frames - target_frames).abs().mean().item()
    print(f"\noverfit one clip: loss {first:.3f} -> {last:.3f}; sampled latent rel err {rel:.3f} "
          f"(noise: {((noise - x1).norm() / x1.norm()).item():.3f}); decoded L1 vs clip decode {pix:.4f}")
    assert last < 0.2 * first
    assert rel < 0.2
    assert frames.shape == x.shape
