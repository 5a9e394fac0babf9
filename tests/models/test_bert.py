"""models/bert.py against transformers' BertModel and fast tokenizer: same tokens, same hidden states."""

import json
import subprocess
import sys

import pytest
import torch

from reelflow.models import bert
from reelflow.models.text_encoder import minilm_path

TEXTS = ["a red square moves left", "", "FPS-8 Ünïcödé 東京 text, with punctuation!!! and 12345",
         "word " * 300, "short"]


def _transformers_pair(path):
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(path, local_files_only=True).eval(), AutoTokenizer.from_pretrained(path, local_files_only=True)


def _assert_same(path, max_lengths=(16, 256)):
    ours, our_tok = bert.load(path)
    theirs, their_tok = _transformers_pair(path)
    for n in max_lengths:
        a = our_tok(TEXTS, padding=True, truncation=True, max_length=n, return_tensors="pt")
        b = their_tok(TEXTS, padding=True, truncation=True, max_length=n, return_tensors="pt")
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            assert torch.equal(a[key], b[key]), (key, n)
        with torch.no_grad():
            x = ours(input_ids=a["input_ids"], attention_mask=a["attention_mask"]).last_hidden_state
            y = theirs(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
        real = a["attention_mask"].bool()  # padded positions are never read (masked out downstream)
        assert (x - y)[real].abs().max().item() < 1e-4, n


def test_minilm_matches_transformers_tokens_and_hidden_states():
    # the shipped all-MiniLM-L6-v2, including its tokenizer.json's fixed 128-token padding, which the
    # caller's padding=True / max_length replace (a 300-word text is cut at max_length, not 128)
    _assert_same(minilm_path())


def test_loading_draws_nothing_from_torchs_random_generator():
    # a seeded run builds its trainable parts after the frozen encoder: their init must not depend
    # on how the encoder was read (transformers draws nothing either)
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    model, _ = bert.load(minilm_path())
    assert torch.equal(torch.rand(4), expected)
    assert not any(p.is_meta for p in model.parameters())


def test_a_checkpoint_saved_from_a_task_model_loads_without_its_prefix_and_pooler(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=300)
    theirs = BertForMaskedLM(cfg).eval()
    theirs.save_pretrained(tmp_path)  # weights named "bert.encoder...", plus an MLM head
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / f).write_bytes((bert.Path(minilm_path()) / f).read_bytes())
    assert bert.supports(tmp_path)
    ours, tok = bert.load(tmp_path)
    batch = tok(TEXTS, padding=True, truncation=True, max_length=40, return_tensors="pt")
    with torch.no_grad():
        x = ours(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        y = theirs.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert (x - y)[batch["attention_mask"].bool()].abs().max().item() < 1e-4


def test_a_folder_it_does_not_read_is_refused_with_a_reason(tmp_path):
    for f in ("config.json", "tokenizer.json", "model.safetensors"):
        (tmp_path / f).write_bytes((bert.Path(minilm_path()) / f).read_bytes())
    assert bert.supports(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "roberta"}))
    assert not bert.supports(tmp_path)
    with pytest.raises(ValueError, match="load it with transformers"):
        bert.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 7}))  # one layer more than saved
    with pytest.raises(RuntimeError, match="Missing key"):
        bert.load(tmp_path)


def test_embedding_a_caption_and_a_prompt_does_not_import_transformers():
    # the point of models/bert.py: the caption stage's actor and every training worker skip
    # transformers' ~4 s import
    code = ("import sys\n"
            "from reelflow.curation.captioning.text_embed import TextEmbedder\n"
            "from reelflow.models.configs import tiny\n"
            "from reelflow.models.text_encoder import build_text_encoder\n"
            "assert TextEmbedder().embed(['a red ball']).shape == (1, 384)\n"
            "build_text_encoder(tiny().text)(['a red ball'])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'sentence_transformers')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
