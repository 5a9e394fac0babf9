"""Movie Gen-style models in plain PyTorch (see models/README.md)."""

from models.audio_model import AudioConfig, AudioTransformer
from models.configs import ModelConfig, get_config
from models.flow_matching import FlowMatchingConfig
from models.tae import TAEConfig, TemporalAutoencoder
from models.text_encoder import TextEncoder, TextEncoderConfig
from models.video_transformer import VideoTransformer, VideoTransformerConfig

__all__ = [
    "AudioConfig", "AudioTransformer", "FlowMatchingConfig", "ModelConfig", "TAEConfig", "TemporalAutoencoder",
    "TextEncoder", "TextEncoderConfig", "VideoTransformer", "VideoTransformerConfig", "get_config",
]
