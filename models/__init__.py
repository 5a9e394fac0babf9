"""Movie Gen-style models in plain PyTorch (see models/README.md)."""

from reelflow.models.audio_model import AudioConfig, AudioTransformer
from reelflow.models.configs import ModelConfig, get_config
from reelflow.models.flow_matching import FlowMatchingConfig
from reelflow.models.tae import TAEConfig, TemporalAutoencoder
from reelflow.models.text_encoder import TextEncoder, TextEncoderConfig
from reelflow.models.video_transformer import VideoTransformer, VideoTransformerConfig

__all__ = [
    "AudioConfig", "AudioTransformer", "FlowMatchingConfig", "ModelConfig", "TAEConfig", "TemporalAutoencoder",
    "TextEncoder", "TextEncoderConfig", "VideoTransformer", "VideoTransformerConfig", "get_config",
]
