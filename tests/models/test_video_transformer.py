import pytest
import torch

from reelflow.models.video_transformer import VideoTransformer, VideoTransformerConfig


def tiny_model(**kw) -> VideoTransformer:
    cfg = dict(latent_channels=8, dim=64, n_layers=2, n_heads=4, ffn_dim=172, text_dim=32, max_frames=8,
               max_height=8, max_width=8)
    cfg.update(kw)
    torch.manual_seed(0)
    model = VideoTransformer(VideoTransformerConfig(**cfg))
    with torch.no_grad():  # leave the zero init so outputs depend on every input
        for p in model.parameters():
            if p.abs().sum() == 0 and p.ndim > 0 and p.numel() > 1:
                p.normal_(0, 0.02)
    return model.eval()


def test_output_shape_video_and_image():
    model = tiny_model()
    text = torch.randn(2, 5, 32)
    with torch.no_grad():
        v = model(torch.randn(2, 8, 3, 8, 6), torch.rand(2), text)
        assert v.shape == (2, 8, 3, 8, 6)
        img = model(torch.randn(2, 8, 1, 4, 4), torch.rand(2), text)
        assert img.shape == (2, 8, 1, 4, 4)
    with pytest.raises(ValueError):
        model(torch.randn(1, 8, 1, 5, 4), torch.rand(1), text[:1])  # H not divisible by the patch
    with pytest.raises(ValueError):
        model(torch.randn(1, 8, 9, 4, 4), torch.rand(1), text[:1])  # more frames than positions


def test_fresh_model_predicts_zero_velocity_and_trains():
    torch.manual_seed(0)
    model = VideoTransformer(VideoTransformerConfig(latent_channels=4, dim=32, n_layers=1, n_heads=2, ffn_dim=64,
                                                    text_dim=16, max_frames=2, max_height=4, max_width=4))
    x, text = torch.randn(1, 4, 2, 4, 4), torch.randn(1, 3, 16)
    v = model(x, torch.rand(1), text)
    assert torch.count_nonzero(v) == 0  # zero-initialised output layer and gates (adaLN-Zero)
    (v - x).pow(2).mean().backward()
    assert model.final.proj.weight.grad.abs().sum() > 0


def test_text_padding_mask_is_respected():
    model = tiny_model()
    x, t = torch.randn(1, 8, 2, 4, 4), torch.rand(1)
    text = torch.randn(1, 3, 32)
    padded = torch.cat([text, torch.randn(1, 4, 32) * 10], dim=1)  # junk in padded positions
    mask = torch.tensor([[True] * 3 + [False] * 4])
    with torch.no_grad():
        a = model(x, t, text)
        b = model(x, t, padded, mask)
        c = model(x, t, padded)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert (a - c).abs().max() > 1e-4  # without the mask the junk would matter


def test_resized_positional_embeddings_keep_old_values():
    model = tiny_model(max_frames=4, max_height=4, max_width=3)
    old_t, old_h, old_w = model.pos_t.clone(), model.pos_h.clone(), model.pos_w.clone()
    old_grid = model.pos_embed(4, 4, 3).view(4, 4, 3, -1).clone()
    model.resize_pos_embed(max_frames=10, max_height=12, max_width=9)  # time extended, space 3x
    assert model.pos_t.shape[0] == 10 and model.pos_h.shape[0] == 12 and model.pos_w.shape[0] == 9
    assert model.cfg.max_frames == 10
    torch.testing.assert_close(model.pos_t[:4], old_t)  # extension keeps old frames
    assert not torch.allclose(model.pos_t[4:], torch.zeros_like(model.pos_t[4:]))  # new frames get rows
    # 3x linear interpolation: new row 3i+1 sits exactly where old row i was
    torch.testing.assert_close(model.pos_h[1::3], old_h, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(model.pos_w[1::3], old_w, atol=1e-6, rtol=1e-6)
    new_grid = model.pos_embed(10, 12, 9).view(10, 12, 9, -1)
    torch.testing.assert_close(new_grid[:4, 1::3, 1::3], old_grid, atol=1e-6, rtol=1e-6)
    # the bigger grid now runs
    with torch.no_grad():
        out = model(torch.randn(1, 8, 10, 24, 18), torch.rand(1), torch.randn(1, 2, 32))
    assert out.shape == (1, 8, 10, 24, 18)
    assert "pos_t" in dict(model.named_parameters())  # still trainable parameters
