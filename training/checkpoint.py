"""Generation checkpoints: model configs + state dicts of the TAE, video model, optional audio
model and the trainable part of the text encoder, in one `torch.save` file.

The frozen text backbone is not stored: the checkpoint names it (config `text.backbone` and
`text.path`) and `load_checkpoint` loads it through the same code as at training time.
Files are read with `weights_only=True`: only tensors and plain containers, no pickled code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from reelflow.models.audio_model import AudioTransformer
from reelflow.models.configs import ModelConfig, get_config
from reelflow.models.tae import TemporalAutoencoder
from reelflow.models.text_encoder import TextEncoder, build_text_encoder
from reelflow.models.video_transformer import VideoTransformer

FORMAT = "reelflow-generation/1"


class CheckpointError(ValueError):
    """The file is missing, unreadable, or not a reelflow generation checkpoint."""


@dataclass
class GenerationModels:
    config: ModelConfig
    tae: TemporalAutoencoder
    video: VideoTransformer
    text: TextEncoder
    audio: AudioTransformer | None = None

    def eval(self) -> GenerationModels:
        for m in (self.tae, self.video, self.text, self.audio):
            if m is not None:
                m.eval()
        return self


def build_models(config: ModelConfig, text: TextEncoder | None = None) -> GenerationModels:
    """Fresh, randomly initialised modules for a config (the text backbone is loaded)."""
    return GenerationModels(
        config=config,
        tae=TemporalAutoencoder(config.tae),
        video=VideoTransformer(config.video),
        text=text if text is not None else build_text_encoder(config.text),
        audio=AudioTransformer(config.audio) if config.audio is not None else None,
    )


def save_checkpoint(models: GenerationModels, path: str | Path,
                    state: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """``state``: full state dicts that replace a part's own (``tae``, ``video``, ``text``,
    ``audio``): a part trained sharded (FSDP) holds only its shard, gathered by the caller."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = state or {}
    text = state.get("text")
    payload = {
        "format": FORMAT,
        "config": models.config.to_dict(),
        "tae": state.get("tae") or models.tae.state_dict(),
        "video": state.get("video") or models.video.state_dict(),
        "text": ({k: v for k, v in text.items() if not k.startswith("backbone.")} if text
                 else models.text.trainable_state_dict()),
        "audio": state.get("audio") or (models.audio.state_dict() if models.audio is not None else None),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint under the real name
    return path


def read_payload(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False,
                 name: str | None = None) -> dict:
    """The checkpoint file's dict, checked to be ours. ``mmap``: tensors stay on disk until read
    (a caller that needs one model of a large checkpoint loads only that one)."""
    path, name = Path(path), name or str(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {name}")
    try:
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            payload = torch.load(path, map_location=map_location, weights_only=True)  # an old non-zip file
    except Exception as e:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"cannot read checkpoint {name}: {type(e).__name__}: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{name} is not a {FORMAT} checkpoint")
    return payload


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> GenerationModels:
    payload = read_payload(path, map_location)
    try:
        config = ModelConfig.from_dict(payload["config"])
        models = build_models(config)
        models.tae.load_state_dict(payload["tae"])
        models.video.load_state_dict(payload["video"])
        models.text.load_trainable_state_dict(payload["text"])
        if models.audio is not None:
            if payload.get("audio") is None:
                raise KeyError("config has an audio model but the checkpoint has no audio weights")
            models.audio.load_state_dict(payload["audio"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"invalid checkpoint {path}: {e}") from e
    return models.eval()


def make_tiny_checkpoint(path: str | Path, seed: int = 0, with_audio: bool = True) -> Path:
    """A randomly initialised `tiny` checkpoint (real MiniLM text backbone) for tests and demos."""
    with torch.random.fork_rng():  # seed the weights without touching the caller's RNG state
        torch.manual_seed(seed)
        models = build_models(get_config("tiny", with_audio=with_audio))
    return save_checkpoint(models, path)
