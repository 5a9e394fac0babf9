import pytest
import torch

from reelflow.models.tae import (
    AttentionBlock,
    Conv25d,
    TAEConfig,
    TemporalAutoencoder,
    outlier_penalty_loss,
    pad_frames_to_valid,
    tae_loss,
)
from reelflow.training.synthetic_shapes import ShapeClip, render_clip


def tiny_cfg(**kw) -> TAEConfig:
    base = dict(latent_channels=8, base_channels=16, channel_mults=(1, 2, 2), num_res_blocks=1,
                temporal_downsamples=2, attention=False)
    base.update(kw)
    return TAEConfig(**base)


def perturb(model: TemporalAutoencoder, scale: float) -> TemporalAutoencoder:
    """Move the identity-initialised temporal layers away from identity, as training would."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Conv25d):
                m.temporal.weight.add_(torch.randn(m.temporal.weight.shape, generator=g) * scale)
            if isinstance(m, AttentionBlock):
                for layer in (m.out_s, m.out_t):
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.1)
    return model


def shapes_video(frames: int, size: int = 32) -> torch.Tensor:
    rgb, _, _ = render_clip(ShapeClip("red", "circle", "right", speed=0.6, size=0.3), size, size, fps=8,
                            num_frames=frames)
    return torch.from_numpy(rgb).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]


def test_shapes_video_and_image():
    torch.manual_seed(0)
    tae = TemporalAutoencoder(tiny_cfg()).eval()
    with torch.no_grad():
        z = tae.encode(torch.randn(1, 3, 9, 32, 32))
        assert z.shape == (1, 8, 3, 8, 8)  # 4x in T (1 + 4k -> 1 + k), H, W
        assert tae.decode(z).shape == (1, 3, 9, 32, 32)
        img = tae.encode(torch.randn(2, 3, 1, 32, 32))  # an image is a one-frame video
        assert img.shape == (2, 8, 1, 8, 8)
        assert tae.decode(img).shape == (2, 3, 1, 32, 32)
    with pytest.raises(ValueError):
        tae.encode(torch.randn(1, 3, 8, 32, 32))  # not 1 + 4k frames
    assert pad_frames_to_valid(torch.randn(1, 3, 8, 4, 4), 4).shape[2] == 9


def test_published_compression_is_8x_with_16_channels():
    cfg = TAEConfig(base_channels=8, num_res_blocks=1, attention=True)  # Movie Gen layout, narrow
    assert (cfg.temporal_compression, cfg.spatial_compression, cfg.latent_channels) == (8, 8, 16)
    tae = TemporalAutoencoder(cfg).eval()
    with torch.no_grad():
        z = tae.encode(torch.randn(1, 3, 17, 32, 32))
        assert z.shape == (1, 16, 3, 4, 4)
        assert tae.decode(z).shape == (1, 3, 17, 32, 32)


def test_symmetric_padding_option():
    """Movie Gen's symmetric temporal padding: same shapes, not causal, tiling still consistent."""
    torch.manual_seed(0)
    tae = TemporalAutoencoder(tiny_cfg(causal=False)).eval()
    x = torch.randn(1, 3, 17, 16, 16)
    with torch.no_grad():
        z = tae.encode(x)
        assert z.shape == (1, 8, 5, 4, 4) and tae.decode(z).shape == x.shape
        torch.testing.assert_close(tae.decode_tiled(z, 3, 1), tae.decode(z), atol=1e-5, rtol=1e-5)  # identity init
    perturb(tae, 0.2)
    x2 = x.clone()
    x2[:, :, 5:] = torch.randn_like(x2[:, :, 5:])
    with torch.no_grad():
        assert (tae.encode(x)[:, :, :2] - tae.encode(x2)[:, :, :2]).abs().max() > 1e-4  # sees the future


def test_encoder_and_decoder_are_causal():
    torch.manual_seed(0)
    tae = perturb(TemporalAutoencoder(tiny_cfg(attention=True)), 0.2).eval()
    x = torch.randn(1, 3, 13, 16, 16)
    x2 = x.clone()
    x2[:, :, 5:] = torch.randn_like(x2[:, :, 5:])  # change the future from frame 5 on
    with torch.no_grad():
        z, z2 = tae.encode(x), tae.encode(x2)
        # latents 0 and 1 are anchored at frames 0 and 4: they must not see frames >= 5
        assert torch.equal(z[:, :, :2], z2[:, :, :2])
        assert (z[:, :, 2:] - z2[:, :, 2:]).abs().max() > 1e-3
        y, y2 = tae.decode(z), tae.decode(z2)
        assert torch.equal(y[:, :, :5], y2[:, :, :5])  # frames 0..4 come from latents 0..1 only
        assert (y[:, :, 5:] - y2[:, :, 5:]).abs().max() > 1e-3


@pytest.fixture(scope="module")
def trained_tae():
    """A tiny TAE trained briefly on one synthetic clip (its temporal layers leave the identity)."""
    torch.manual_seed(0)
    tae = TemporalAutoencoder(tiny_cfg())
    x = shapes_video(9, 32)
    opt = torch.optim.Adam(tae.parameters(), lr=2e-3)
    first = None
    for _ in range(150):
        recon, mean, logvar = tae(x)
        losses = tae_loss(x, recon, mean, logvar, tae.cfg)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        first = first if first is not None else losses["recon"].item()
    return tae.eval(), x, first


def test_round_trip_after_short_training(trained_tae):
    tae, x, first = trained_tae
    with torch.no_grad():
        recon = tae.decode(tae.encode(x))
    l1 = (recon - x).abs().mean().item()
    mse = (recon - x).pow(2).mean().item()
    psnr = 10 * torch.log10(torch.tensor(4.0 / mse)).item()  # peak-to-peak range is 2
    print(f"TAE round trip: L1 {first:.3f} -> {l1:.3f}, PSNR {psnr:.1f} dB")
    assert recon.shape == x.shape
    assert l1 < 0.25 * first
    assert psnr > 18.0


def test_tiled_matches_untiled(trained_tae):
    x = shapes_video(33, 32)  # 9 latent frames
    # freshly inflated (temporal layers = identity): tiling is exact
    fresh = TemporalAutoencoder(tiny_cfg()).eval()
    with torch.no_grad():
        z = fresh.encode(x)
        torch.testing.assert_close(fresh.encode_tiled(x, 4, 1), z, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fresh.decode_tiled(z, 4, 2), fresh.decode(z), atol=1e-5, rtol=1e-5)
    # trained (temporal mixing learned): overlapping, blended tiles stay close to the untiled result
    tae = trained_tae[0]
    with torch.no_grad():
        z = tae.encode(x)
        y = tae.decode(z)
        zt = tae.encode_tiled(x, 5, 2)
        yt = tae.decode_tiled(z, 5, 2)
        rel_z = ((zt - z).norm() / z.norm()).item()
        rel_y = ((yt - y).norm() / y.norm()).item()
    print(f"tiled vs untiled (trained TAE): encode rel err {rel_z:.4f}, decode rel err {rel_y:.4f}")
    assert zt.shape == z.shape and yt.shape == y.shape
    assert rel_z < 0.05 and rel_y < 0.05


def test_outlier_penalty():
    z = torch.randn(2, 4, 3, 8, 8).clamp(-2.5, 2.5)
    assert outlier_penalty_loss(z, 3.0).item() == 0.0  # nothing beyond 3 std
    spiky = z.clone()
    spiky[0, 1, 1, 4, 4] = 40.0  # a latent "spot"
    spiky.requires_grad_(True)
    loss = outlier_penalty_loss(spiky, 3.0)
    loss.backward()
    assert loss.item() > 0
    assert spiky.grad[0, 1, 1, 4, 4] > 0  # gradient descent pulls the spot back


def test_small_objects_survive_a_short_training_of_the_tiny_config():
    """The tiny config's TAE, trained briefly on rendered shapes (32 px images), must give the
    objects back, not the background. With Movie Gen's 1e5 outlier weight, unit initial posterior
    noise and L1 alone, the same run decodes every object as black (object L1 ~1.32, object pixels
    ~(1, 1, 2) against ~(204, 179, 126); measured): this test fails on that setting."""
    import numpy as np

    from reelflow.models.configs import tiny
    from reelflow.training.synthetic_shapes import random_clip

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    clips = [render_clip(random_clip(rng), 32, 32, fps=8, num_frames=1)[0] for _ in range(96)]
    data = torch.from_numpy(np.stack(clips)).float().div(127.5).sub(1).permute(0, 4, 1, 2, 3)  # (N, 3, 1, H, W)
    cfg = tiny().tae
    tae = TemporalAutoencoder(cfg)
    opt = torch.optim.AdamW(tae.parameters(), lr=3e-3, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        x = data[torch.randint(0, 80, (8,), generator=gen)]
        recon, mean, logvar = tae(x)
        loss = tae_loss(x, recon, mean, logvar, cfg)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x = data[80:]
        recon = tae.decode(tae.encode(x)).clamp(-1, 1)
    obj = (x + 1).abs().sum(1) > 0.3  # the shapes' pixels (the background is black, -1)
    object_l1 = (recon - x).abs().mean(1)[obj].mean().item()
    brightness = ((recon + 1) * 127.5).amax(1)[obj].mean().item()
    assert object_l1 < 1.0 and brightness > 80, f"objects decode as background: L1 {object_l1:.2f}, max channel {brightness:.0f}"


def test_one_channel_per_group_norm_is_blind_to_colour_and_the_tiny_config_is_not():
    """GroupNorm with one channel per group is an instance norm: a frame with a dim red object and
    a frame with a bright red one normalise to the same map (the object's level is lost). The
    tiny/small configs use one group per frame (norm_groups=1), which keeps channel ratios."""
    from reelflow.models.configs import tiny
    from reelflow.models.tae import FrameGroupNorm, _num_groups

    frame = torch.zeros(1, 4, 1, 8, 8)
    frame[..., 2:5, 2:5] = 10.0  # large against GroupNorm's eps
    dim, bright = frame * torch.tensor([0.3, 0.1, 0.1, 0.2]).view(1, 4, 1, 1, 1), frame * torch.tensor([0.9, 0.1, 0.1, 0.2]).view(1, 4, 1, 1, 1)
    per_channel = FrameGroupNorm(_num_groups(4), 4)
    assert _num_groups(4) == 4
    assert torch.allclose(per_channel(dim), per_channel(bright), atol=1e-3)  # the defect, shown
    layer = FrameGroupNorm(_num_groups(4, tiny().tae.norm_groups), 4)
    assert not torch.allclose(layer(dim), layer(bright), atol=1e-2)
    assert _num_groups(64, 32) == 32 and _num_groups(64, 1) == 1 and _num_groups(48, 8) == 8


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("temporal_stride", [1, 2])
def test_conv25d_temporal_matmul_equals_a_conv1d_over_each_pixels_frames(causal, temporal_stride):
    # Conv25d runs its temporal conv as one batched matmul over frame-major taps (faster on CPU);
    # the reference is the plain formulation: nn.Conv1d over every pixel's frames, replicate-padded.
    torch.manual_seed(0)
    conv = Conv25d(5, 6, spatial_stride=2, temporal_stride=temporal_stride, causal=causal)
    with torch.no_grad():
        conv.temporal.weight.normal_(0, 0.3)
        conv.temporal.bias.normal_(0, 0.3)
    x = torch.randn(2, 5, 9, 8, 10, requires_grad=True)
    y = conv.spatial(x.transpose(1, 2).flatten(0, 1))
    b, t, (c, h, w) = 2, 9, y.shape[1:]
    rows = y.view(b, t, c, h, w).permute(0, 3, 4, 2, 1).reshape(b * h * w, c, t)
    rows = torch.nn.functional.pad(rows, (2, 0) if causal else (1, 1), mode="replicate")
    ref = conv.temporal(rows)
    ref = ref.view(b, h, w, c, ref.shape[-1]).permute(0, 3, 4, 1, 2)
    out = conv(x)
    assert out.shape == ref.shape == (2, 6, 1 + 8 // temporal_stride, 4, 5)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # and the same gradients
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), [x, conv.temporal.weight, conv.spatial.weight])
    ref_grads = torch.autograd.grad((ref * g).sum(), [x, conv.temporal.weight, conv.spatial.weight])
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)
