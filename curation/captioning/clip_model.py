"""CLIP video embeddings and zero-shot tags with open_clip, from configured weights.

``load_open_clip`` is the one place an open_clip model is built from disk; the aesthetics scorer
(``curation.scoring.aesthetics``) uses it too, so one ViT-L/14 checkpoint can serve both. Weights:

* a state-dict file (``.pt``/``.bin``/``.safetensors``, local or ``s3://``) for the architecture
  named by ``model`` — a built-in open_clip name (e.g. ``ViT-L-14-quickgelu``, ``ViT-B-32``) or
  one registered from ``model_config`` (an open_clip model-config JSON whose file stem is the name);
* or a local *directory* holding ``open_clip_config.json`` and the weights (open_clip's
  ``local-dir:`` layout, as published on model hubs); ``model`` is then ignored.

Nothing is downloaded: a checkpoint that is not an existing file or directory raises, and pretrained
*tags* (``"openai"``, ``"laion2b_..."``) are never passed to open_clip. Without a checkpoint the
embedder is *disabled* and raises ``ModelDisabled``.

Outputs (``ClipEmbedder``):

``embed_frames(frames, n)``
    (d,) float32, unit L2 norm: the mean of the L2-normalised image embeddings of ``n`` evenly
    spaced frames (the centres of ``n`` equal spans of the clip), re-normalised. A video-level
    embedding for concept balancing, dedup against text, and zero-shot tags.
``zero_shot_tags(embedding, taxonomy, top_k, min_prob)``
    ``[(tag, prob), ...]`` best first: CLIP zero-shot classification over ``taxonomy`` — softmax
    over tags of ``logit_scale · cos(video, text("a video of {tag}"))`` — keeping at most
    ``top_k`` tags with probability >= ``min_prob``. Probabilities are relative to the taxonomy
    (they sum to 1 over it), so ``min_prob`` should shrink as the taxonomy grows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reelflow.curation.captioning.common import ModelDisabled, local_weights

# A small general-purpose taxonomy for zero-shot tags when the caller brings none: broad scene,
# subject and style concepts a caption can name. Phrased to follow "a video of ...".
DEFAULT_TAXONOMY: tuple[str, ...] = (
    "people talking", "a crowd of people", "a person walking", "a person running", "people dancing",
    "children playing", "a sports game", "cycling", "a car driving on a road", "traffic in a city",
    "a city street", "buildings and architecture", "an interior room", "a kitchen and cooking",
    "food", "a forest", "mountains", "a beach and the ocean", "a river or lake", "a field of grass",
    "flowers and plants", "snow", "rain", "a sunset", "the sky and clouds", "a night scene",
    "animals", "a dog", "a cat", "birds", "horses", "fish underwater", "insects",
    "a cartoon animation", "a video game", "computer graphics", "a musical performance",
    "an aerial view", "a close-up of a face", "hands working", "a machine or tools", "text on a screen",
    "fire", "water splashing", "an airplane", "a boat", "a train",
)

_REGISTERED_CONFIGS: set[str] = set()  # open_clip model-config files already added (adding rescans all)


@dataclass(frozen=True)
class ClipConfig:
    model: str = "ViT-L-14-quickgelu"  # open_clip architecture; OpenAI ViT-L/14 also feeds LAION's aesthetic head
    checkpoint: str | None = None  # state-dict file (path or s3:// URI) or local open_clip model dir; None: disabled
    model_config: str | None = None  # optional open_clip model-config JSON (its stem = model), for archs not built in
    device: str = "cpu"
    n_frames: int = 4  # frames averaged into one video embedding
    prompt_template: str = "a video of {tag}"  # text prompt per taxonomy tag
    top_k: int = 5  # zero-shot tags kept at most
    min_prob: float = 0.1  # zero-shot tags below this softmax probability are dropped


@dataclass
class LoadedClip:
    model: object  # open_clip CLIP module, eval mode, on the configured device
    preprocess: object  # PIL image -> normalised tensor, as the model was trained
    name: str  # the open_clip model identifier it was built from (for its tokenizer)

    def tokenizer(self):
        import open_clip

        return open_clip.get_tokenizer(self.name)


def _register_config(path: Path) -> None:
    import open_clip

    if str(path) not in _REGISTERED_CONFIGS:
        open_clip.add_model_config(path)
        _REGISTERED_CONFIGS.add(str(path))


def load_open_clip(model: str, checkpoint: str, model_config: str | None = None, device: str = "cpu",
                   what: str = "clip") -> LoadedClip:
    """Build an open_clip model from configured weights.

    ``checkpoint`` is a state-dict file for architecture ``model`` (registered from
    ``model_config`` when given) or a local ``open_clip_config.json`` directory. ``what`` names the
    caller in errors. Never downloads: missing weights raise ``FileNotFoundError``."""
    path = local_weights(checkpoint, what, allow_dir=True)  # before importing open_clip: fail fast
    import open_clip

    if path.is_dir():
        # open_clip builds a *randomly initialised* model from a folder without weights (with only a
        # warning): refuse that here, a made-up embedding is worse than none
        if not (path / "open_clip_config.json").is_file() or not any(
                f.suffix in (".safetensors", ".bin", ".pth") for f in path.iterdir()):
            raise FileNotFoundError(f"{what}: {checkpoint} holds no open_clip_config.json and weights")
        name = f"local-dir:{path}"
        clip, _, preprocess = open_clip.create_model_and_transforms(
            name, device=device, pretrained_image=False, pretrained_text=False)
    else:
        if model_config:
            cfg_path = local_weights(model_config, f"{what} model config")
            if cfg_path.stem != model:
                raise ValueError(f"{what}: model config {cfg_path.name} registers {cfg_path.stem!r}, "
                                 f"not the configured model {model!r}")
            _register_config(cfg_path)
        name = model
        # pretrained= is an existing file here, never a tag open_clip would download
        clip, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=str(path), device=device, pretrained_image=False, pretrained_text=False)
    return LoadedClip(clip.eval(), preprocess, name)


def make_tiny_clip_checkpoint(root: str | Path, name: str = "reelflow-tiny-clip-zs", seed: int = 0) -> dict:
    """Write a tiny randomly initialised open_clip model for tests, in both layouts ``load_open_clip``
    reads: ``{"model": name, "config": <model-config json>, "checkpoint": <state-dict file>, "dir":
    <open_clip model folder with the same weights>}`` — use ``ClipConfig(model=..., checkpoint=...,
    model_config=...)`` or ``ClipConfig(checkpoint=<dir>)``. The text tower keeps the real BPE
    vocabulary size (49408) so open_clip's own tokenizer works; everything else is tiny (16-d
    embeddings, 32-px images; ~3 MB)."""
    import json

    import open_clip
    import torch

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
    }
    cfg_path = root / f"{name}.json"
    cfg_path.write_text(json.dumps(model_cfg))
    _register_config(cfg_path)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained_image=False, pretrained_text=False)
    ckpt = root / f"{name}.pt"
    torch.save(model.state_dict(), ckpt)
    folder = root / f"{name}-dir"
    folder.mkdir(exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return {"model": name, "config": cfg_path, "checkpoint": ckpt, "dir": folder}


def frame_indices(n_frames: int, n: int) -> np.ndarray:
    """``n`` evenly spaced indices into ``n_frames`` frames: the centres of ``n`` equal spans
    (every frame when the clip has fewer than ``n``)."""
    if n_frames <= n:
        return np.arange(n_frames)
    return np.floor((np.arange(n) + 0.5) * n_frames / n).astype(int)


class ClipEmbedder:
    def __init__(self, cfg: ClipConfig | None = None):
        self.cfg = cfg or ClipConfig()
        self.enabled = bool(self.cfg.checkpoint)
        self.disabled_reason = "" if self.enabled else "clip disabled: no clip checkpoint configured"
        self._model = None
        self._preprocess = None
        self._tokenizer = None
        self._text_cache: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}

    def status(self) -> dict:
        return {"enabled": self.enabled, "reason": self.disabled_reason}

    def setup(self) -> "ClipEmbedder":
        """Load the model (once). A configured checkpoint that is missing raises."""
        if not self.enabled or self._model is not None:
            return self
        c = self.cfg
        loaded = load_open_clip(c.model, c.checkpoint, c.model_config, c.device, what="clip")
        self._model, self._preprocess, self._tokenizer = loaded.model, loaded.preprocess, loaded.tokenizer()
        return self

    def _require(self) -> None:
        if not self.enabled:
            raise ModelDisabled(self.disabled_reason)
        self.setup()

    @property
    def dim(self) -> int:
        self._require()
        return int(self._model.visual.output_dim)

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """(N, d) float32 L2-normalised image embeddings of (N, H, W, 3) uint8 RGB images."""
        self._require()
        import torch
        from PIL import Image

        x = torch.stack([self._preprocess(Image.fromarray(np.ascontiguousarray(im))) for im in images])
        with torch.inference_mode():
            e = self._model.encode_image(x.to(self.cfg.device)).float()
        return (e / e.norm(dim=-1, keepdim=True)).cpu().numpy().astype(np.float32)

    def embed_frames(self, frames: np.ndarray, n: int | None = None) -> np.ndarray:
        """(d,) float32 unit-norm video embedding: mean of the normalised embeddings of ``n``
        (default ``cfg.n_frames``) evenly spaced frames of (T, H, W, 3) uint8 ``frames``."""
        if len(frames) == 0:
            raise ValueError("embed_frames: no frames")
        e = self.embed_images(frames[frame_indices(len(frames), n or self.cfg.n_frames)]).mean(axis=0)
        return (e / max(float(np.linalg.norm(e)), 1e-12)).astype(np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(N, d) float32 L2-normalised text embeddings (CLIP's text tower)."""
        self._require()
        import torch

        with torch.inference_mode():
            e = self._model.encode_text(self._tokenizer(list(texts)).to(self.cfg.device)).float()
        return (e / e.norm(dim=-1, keepdim=True)).cpu().numpy().astype(np.float32)

    def _taxonomy_embeddings(self, taxonomy: tuple[str, ...]) -> np.ndarray:
        key = (self.cfg.prompt_template, taxonomy)
        if key not in self._text_cache:  # a taxonomy is encoded once, not once per clip
            self._text_cache[key] = self.embed_texts([self.cfg.prompt_template.format(tag=t) for t in taxonomy])
        return self._text_cache[key]

    def zero_shot_probs(self, embedding: np.ndarray, taxonomy: list[str] | tuple[str, ...]) -> np.ndarray:
        """Softmax over ``taxonomy`` of logit_scale x cosine(embedding, prompt(tag)), (len(taxonomy),)."""
        self._require()
        taxonomy = tuple(taxonomy)
        if not taxonomy:
            return np.zeros(0, np.float32)
        text = self._taxonomy_embeddings(taxonomy)
        v = np.asarray(embedding, np.float32).reshape(-1)
        v = v / max(float(np.linalg.norm(v)), 1e-12)
        scale = float(self._model.logit_scale.exp().item())
        logits = scale * (text @ v)
        p = np.exp(logits - logits.max())
        return (p / p.sum()).astype(np.float32)

    def zero_shot_tags(self, embedding: np.ndarray, taxonomy: list[str] | tuple[str, ...] = DEFAULT_TAXONOMY,
                       top_k: int | None = None, min_prob: float | None = None) -> list[tuple[str, float]]:
        """At most ``top_k`` ``(tag, probability)`` pairs with probability >= ``min_prob``, best first
        (defaults from the config)."""
        top_k = self.cfg.top_k if top_k is None else top_k
        min_prob = self.cfg.min_prob if min_prob is None else min_prob
        taxonomy = tuple(taxonomy)
        p = self.zero_shot_probs(embedding, taxonomy)
        order = np.argsort(-p, kind="stable")[:max(0, top_k)]
        return [(taxonomy[i], float(p[i])) for i in order if p[i] >= min_prob]
