import shutil

import pytest
import torch

from reelflow.models.text_encoder import TextEncoder, TextEncoderConfig, build_text_encoder, minilm_path, quoted_spans


def test_minilm_real_weights_frozen_and_meaningful(minilm_text_encoder):
    enc = minilm_text_encoder
    feats, mask = enc(["A red ball bounces to the right.", 'A sign that says "OPEN"'])
    assert feats.shape[0] == 2 and feats.shape[2] == enc.out_dim == 64
    assert mask.dtype == torch.bool and mask.shape == feats.shape[:2]
    assert all(not p.requires_grad for p in enc.backbone.parameters())
    enc.train()
    assert not enc.backbone.training  # stays frozen in eval mode
    enc.eval()

    def sentence(texts):  # mean-pooled MiniLM embedding, as sentence-transformers does
        h, m = enc.backbone(texts)
        e = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)
        return torch.nn.functional.normalize(e, dim=-1)

    a, b, c = sentence(["a red circle moving left", "a crimson ball rolling to the left", "quarterly tax report"])
    # real pretrained weights put paraphrases closer than unrelated text
    assert (a @ b) > (a @ c) + 0.2


def test_character_encoder_reads_quoted_text(minilm_text_encoder):
    assert quoted_spans('a sign that says "OPEN" and “late”') == "OPEN late"
    assert quoted_spans("no quotes here") == ""
    enc = minilm_text_encoder
    with torch.no_grad():
        f1, m1 = enc(['a sign that says "OPEN"'])
        f2, m2 = enc(['a sign that says "SHUT"'])
        f3, m3 = enc(["a sign"])
    n_char = 1 + len("OPEN")  # BOS + bytes
    assert m1[0, -n_char:].all()
    assert (f1[0, -n_char:] - f2[0, -n_char:]).abs().max() > 1e-3  # the spelled text differs
    assert m3[0, -1]  # no quotes still gives one (BOS) token


def test_trainable_state_excludes_frozen_backbone(minilm_text_encoder):
    sd = minilm_text_encoder.trainable_state_dict()
    assert sd and not any(k.startswith("backbone.") for k in sd)
    fresh = TextEncoder(minilm_text_encoder.cfg, minilm_text_encoder.backbone)
    fresh.load_trainable_state_dict(sd)
    with torch.no_grad():
        torch.testing.assert_close(fresh(["hello"])[0], minilm_text_encoder(["hello"])[0])
    with pytest.raises(KeyError):
        fresh.load_trainable_state_dict({"bogus": torch.zeros(1)})


def test_hf_encoder_by_path_uses_encoder_of_seq2seq(tmp_path):
    """A cluster config names a larger encoder (e.g. T5) by path; a tiny random T5 on disk goes
    through the same loading code (with MiniLM's tokenizer files, so nothing is downloaded)."""
    from transformers import T5Config, T5Model

    src = minilm_path()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(f"{src}/{name}", tmp_path / name)
    T5Model(T5Config(vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                     decoder_start_token_id=0)).save_pretrained(tmp_path)
    enc = build_text_encoder(TextEncoderConfig(backbone="hf", path=str(tmp_path), out_dim=48, char_encoder=False))
    assert enc.backbone.dim == 32
    feats, mask = enc(["a tiny t5", "two"])
    assert feats.shape[0] == 2 and feats.shape[2] == 48 and mask.shape == feats.shape[:2]
    with pytest.raises(ValueError):
        build_text_encoder(TextEncoderConfig(backbone="hf", path=None))


def test_char_only_encoder():
    enc = build_text_encoder(TextEncoderConfig(backbone="none", out_dim=16, char_dim=16, char_heads=2, char_layers=1))
    feats, mask = enc(['say "hi"', "nothing"])
    assert feats.shape == (2, 3, 16) and mask.tolist() == [[True, True, True], [True, False, False]]


def test_backbone_cache_returns_what_the_encoder_computes(minilm_text_encoder):
    bb = minilm_text_encoder.backbone
    bb(["a red circle moves right"])  # seen before: served from the cache below
    prompts = ["a red circle moves right", "a long prompt about a blue square that moves down slowly", "a red circle moves right"]
    h, m = bb(prompts)
    ref_h, ref_m = bb.encode(prompts)
    assert torch.equal(m, ref_m)
    assert torch.allclose(h[m], ref_h[ref_m], atol=1e-5)
    assert (h[~m] == 0).all()
    assert "a long prompt about a blue square that moves down slowly" in bb._cache
    full, bb.cache_bytes = bb.cache_bytes, bb._cached_bytes  # no room left: new prompts are encoded, not kept
    try:
        h2, m2 = bb(["an unseen prompt", "a red circle moves right"])
        ref2, _ = bb.encode(["an unseen prompt", "a red circle moves right"])
        assert "an unseen prompt" not in bb._cache and torch.allclose(h2[m2], ref2[m2], atol=1e-5)
    finally:
        bb.cache_bytes = full
