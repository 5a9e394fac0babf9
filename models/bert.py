"""A BERT encoder (all-MiniLM-L6-v2 and its kin) in plain torch, read from a Hugging Face folder.

Why not ``transformers.AutoModel``: importing transformers' model code costs ~4 s of CPU on top of
torch's ~2 s on the 2-core machine (measured: ``import torch`` 2.1 s, + ``BertModel`` 6.2 s), and
every process that embeds a caption or a prompt paid it: the caption stage's actor, each Ray Train
worker of every training stage, ``generate`` and ``eval``. The encoder itself is ~40 lines of
attention and layer norms; the weights are the folder's own ``model.safetensors`` (or
``pytorch_model.bin``) under transformers' parameter names, so ``load_state_dict`` is strict and a
folder this does not fit fails loudly. ``tests/models/test_bert.py`` checks tokens and hidden
states against transformers' ``BertModel`` on the shipped MiniLM.

The tokenizer is the folder's ``tokenizer.json`` run by the ``tokenizers`` library (the Rust
tokenizer transformers' fast tokenizers wrap), with the file's own fixed padding and truncation
replaced by the caller's (pad to the longest in the batch, truncate at ``max_length``), which is
what ``tokenizer(texts, padding=True, truncation=True, max_length=n)`` does.

Only ``model_type: bert`` with absolute positions is read here (``supports``); other encoders go
through transformers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0

    @classmethod
    def from_json(cls, path: Path) -> BertConfig:
        raw = json.loads(path.read_text())
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


_ACTIVATIONS = {"gelu": F.gelu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu}


def supports(path: str | Path) -> bool:
    """Whether ``path`` holds a BERT encoder this module reads (else use transformers)."""
    path = Path(path)
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (raw.get("model_type") == "bert" and raw.get("position_embedding_type", "absolute") == "absolute"
            and raw.get("hidden_act", "gelu") in _ACTIVATIONS and (path / "tokenizer.json").is_file()
            and any((path / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")))


class _Embeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, ids: torch.Tensor, type_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.word_embeddings(ids) + self.position_embeddings(pos)[None] + self.token_type_embeddings(type_ids)
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.heads = c.num_attention_heads
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        # keep: (B, 1, 1, N) bool, True where a key is a real token (padding is never attended to)
        out = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                             attn_mask=keep, scale=1.0 / math.sqrt(d // self.heads))
        return out.transpose(1, 2).reshape(b, n, d)


class _DenseNorm(nn.Module):
    """dense -> + residual -> LayerNorm (BERT's ``*Output`` blocks)."""

    def __init__(self, c: BertConfig, d_in: int):
        super().__init__()
        self.dense = nn.Linear(d_in, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _DenseNorm(c, c.hidden_size)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, keep), x)


class _Intermediate(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)
        self.act = _ACTIVATIONS[c.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _DenseNorm(c, c.intermediate_size)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, keep)
        return self.output(self.intermediate(a), a)


class _Encoder(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


@dataclass
class BertOutput:
    last_hidden_state: torch.Tensor  # (B, N, hidden)


class BertEncoder(nn.Module):
    """BERT without the pooler: ``forward(input_ids, attention_mask)`` -> ``.last_hidden_state``,
    the call shape of transformers' ``BertModel`` that ``Backbone`` and ``TextEmbedder`` use."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> BertOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        keep = attention_mask.bool()[:, None, None, :]
        for layer in self.encoder.layer:
            x = layer(x, keep)
        return BertOutput(x)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> BertEncoder:
        path = Path(path)
        # Built under a forked generator, then given the saved tensors: loading the encoder draws
        # nothing from torch's global generator. (It did once: every trainable part built after it,
        # seeded the same, came out different from a transformers load.) Not on the meta device:
        # its first use in a process costs ~1.5 s of lazy set-up, ~7x this small model's random init.
        with torch.random.fork_rng(devices=[]):
            model = cls(BertConfig.from_json(path / "config.json"))
        if (path / "model.safetensors").is_file():
            from safetensors.torch import load_file

            state = load_file(str(path / "model.safetensors"))
        else:
            state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
        # Checkpoints saved from a task model (BertForMaskedLM, ...) prefix the encoder with "bert.";
        # the pooler and position_ids (a buffer) are not part of this encoder.
        state = {k.removeprefix("bert."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if k.startswith(("embeddings.", "encoder."))
                 and not k.endswith("position_ids")}
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()


class Encoding(dict):
    """Token tensors by name; ``.to(device)`` moves them all (as transformers' ``BatchEncoding``)."""

    def to(self, device: torch.device | str) -> Encoding:
        return Encoding({k: v.to(device) for k, v in self.items()})


class BertTokenizer:
    """The folder's ``tokenizer.json``, called like a transformers fast tokenizer:
    ``tok(texts, padding=True, truncation=True, max_length=n, return_tensors="pt")`` -> an ``Encoding`` of
    ``input_ids``, ``token_type_ids`` and ``attention_mask`` (long tensors)."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        path = Path(path)
        self._tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        cfg_file = path / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        self.model_max_length = int(cfg.get("model_max_length", 512))
        pad = cfg.get("pad_token", "[PAD]")
        pad = pad.get("content", "[PAD]") if isinstance(pad, dict) else pad
        self.pad_token = pad
        self.pad_token_id = self._tok.token_to_id(pad)
        if self.pad_token_id is None:
            raise ValueError(f"{path / 'tokenizer.json'}: no pad token {pad!r} in the vocabulary")

    def __call__(self, texts: list[str] | str, padding: bool = True, truncation: bool = True,
                 max_length: int | None = None, return_tensors: str = "pt") -> Encoding:
        if return_tensors != "pt":
            raise ValueError("BertTokenizer returns torch tensors only (return_tensors='pt')")
        if isinstance(texts, str):
            texts = [texts]
        tok = self._tok
        tok.no_truncation()
        tok.no_padding()
        if truncation:
            tok.enable_truncation(max_length or self.model_max_length)
        if padding:
            tok.enable_padding(pad_id=self.pad_token_id, pad_token=self.pad_token)
        enc = tok.encode_batch(list(texts))
        return Encoding(
            input_ids=torch.tensor([e.ids for e in enc], dtype=torch.long),
            token_type_ids=torch.tensor([e.type_ids for e in enc], dtype=torch.long),
            attention_mask=torch.tensor([e.attention_mask for e in enc], dtype=torch.long),
        )


def load(path: str | Path) -> tuple[BertEncoder, BertTokenizer]:
    """The encoder and tokenizer of a BERT folder (``supports(path)`` must hold)."""
    if not supports(path):
        raise ValueError(f"{path}: not a BERT folder this module reads (model_type bert, absolute positions, "
                         "tokenizer.json, model.safetensors or pytorch_model.bin); load it with transformers")
    return BertEncoder.from_pretrained(path), BertTokenizer(path)
