"""LAION-style aesthetic score of a clip's middle frame.

Movie Gen scores the *middle frame* with the LAION aesthetic predictor and keeps clips scoring
>= 4.0; averaging several frames did not help (Movie Gen). This module only measures; the
policy decides (``MOVIEGEN_MIN_AESTHETIC`` is that figure, for the policy author to cite).

Model: an open_clip image tower → L2-normalised image embedding → the MLP head of LAION's
improved-aesthetic-predictor (``Linear(d,1024)-Dropout(0.2)-Linear(1024,128)-Dropout(0.2)-
Linear(128,64)-Dropout(0.1)-Linear(64,16)-Linear(16,1)``, parameter names ``layers.N.*`` as in
its published checkpoints, so ``sac+logos+ava1-l14-linearMSE.pth`` loads as is). The published
head was trained on OpenAI CLIP ViT-L/14 embeddings (d = 768): use ``clip_model =
"ViT-L-14-quickgelu"`` with an open_clip state dict of those weights.

Both weights come from configured paths (local, or ``s3://`` via ``Storage.localize``) and are
loaded once per process or actor (``setup()``, or lazily on first ``score``); nothing is ever
downloaded from a model hub. The open_clip model is built by
``curation.captioning.clip_model.load_open_clip``, shared with the CLIP embedder, so one
checkpoint file (or open_clip model directory) serves both. With either path unset the scorer
is *disabled*: ``enabled`` is False, ``disabled_reason`` says why, and ``score`` raises
``ScorerDisabled`` — it never returns a made-up score. A path that is set but missing or does not fit the architecture is a
configuration error and raises at ``setup``.

Score (``AestheticScorer.score``):

=============== ============================ ============================================
name            unit                         meaning
=============== ============================ ============================================
aesthetic_score LAION aesthetic rating       the head's regression output for the middle
                (AVA-style 1–10 scale; the   analysis frame (index T // 2); unbounded in
                output is not clamped)       principle, ~3–7 on real footage
=============== ============================ ============================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reelflow.curation.captioning.clip_model import load_open_clip
from reelflow.curation.captioning.common import ModelDisabled, local_weights
from reelflow.curation.scoring.frames import AnalysisClip

MOVIEGEN_MIN_AESTHETIC = 4.0  # Movie Gen: keep clips whose middle frame scores >= 4.0


class ScorerDisabled(ModelDisabled):
    """A scorer without configured weights was asked for a score."""


@dataclass(frozen=True)
class AestheticsConfig:
    clip_model: str = "ViT-L-14-quickgelu"  # open_clip architecture name (OpenAI ViT-L/14 for LAION's head)
    clip_checkpoint: str | None = None  # open_clip state dict (.bin/.pt/.safetensors): path or s3:// URI
    head_checkpoint: str | None = None  # LAION improved-aesthetic-predictor head state dict: path or URI
    clip_model_config: str | None = None  # optional open_clip model-config JSON (its stem = clip_model), for archs not built in
    device: str = "cpu"


def aesthetic_head(dim: int):
    """LAION improved-aesthetic-predictor MLP (eval mode makes the dropouts identities)."""
    from torch import nn

    class AestheticHead(nn.Module):
        def __init__(self, d: int):
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(d, 1024), nn.Dropout(0.2),
                nn.Linear(1024, 128), nn.Dropout(0.2),
                nn.Linear(128, 64), nn.Dropout(0.1),
                nn.Linear(64, 16),
                nn.Linear(16, 1),
            )

        def forward(self, x):
            return self.layers(x)

    return AestheticHead(dim)


def _local(uri: str) -> Path:
    return local_weights(uri, "aesthetics")


class AestheticScorer:
    def __init__(self, cfg: AestheticsConfig | None = None):
        self.cfg = cfg or AestheticsConfig()
        missing = [k for k in ("clip_checkpoint", "head_checkpoint") if not getattr(self.cfg, k)]
        self.enabled = not missing
        self.disabled_reason = (
            "" if self.enabled else f"aesthetics disabled: no {' and no '.join(missing)} configured"
        )
        self._visual = None
        self._preprocess = None
        self._head = None

    def status(self) -> dict:
        return {"enabled": self.enabled, "reason": self.disabled_reason}

    def setup(self) -> "AestheticScorer":
        if not self.enabled or self._head is not None:
            return self
        import torch

        cfg = self.cfg
        loaded = load_open_clip(cfg.clip_model, cfg.clip_checkpoint, cfg.clip_model_config, cfg.device,
                                what="aesthetics")
        visual, preprocess = loaded.model.visual.eval(), loaded.preprocess
        del loaded  # the text tower is not needed: keep only the image tower
        state = torch.load(_local(cfg.head_checkpoint), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and "layers.0.weight" not in state:
            state = state["state_dict"]
        if "layers.0.weight" not in state:
            raise ValueError(f"aesthetics: {cfg.head_checkpoint} is not an aesthetic-predictor head state dict "
                             f"(no layers.0.weight; keys: {sorted(state)[:5]})")
        dim = int(state["layers.0.weight"].shape[1])
        out_dim = getattr(visual, "output_dim", None)
        if out_dim is not None and out_dim != dim:
            raise ValueError(f"aesthetics: head expects {dim}-d embeddings, {cfg.clip_model} gives {out_dim}-d")
        head = aesthetic_head(dim)
        head.load_state_dict(state, strict=True)
        self._visual, self._preprocess, self._head = visual, preprocess, head.to(cfg.device).eval()
        return self

    def embed(self, rgb: np.ndarray):
        """L2-normalised CLIP image embedding (1, d) of one RGB uint8 frame."""
        import torch
        from PIL import Image

        self.setup()
        x = self._preprocess(Image.fromarray(rgb)).unsqueeze(0).to(self.cfg.device)
        with torch.inference_mode():
            e = self._visual(x).float()
            return e / e.norm(dim=-1, keepdim=True)

    def score_frame(self, rgb: np.ndarray) -> float:
        """The head's rating of one RGB uint8 frame."""
        if not self.enabled:
            raise ScorerDisabled(self.disabled_reason)
        import torch

        e = self.embed(rgb)
        with torch.inference_mode():
            return float(self._head(e).reshape(-1)[0])

    def score(self, clip: AnalysisClip) -> dict[str, float]:
        """Movie Gen's aesthetic input: the middle frame only (index T // 2)."""
        return {"aesthetic_score": self.score_frame(clip.frames[len(clip.frames) // 2])}
