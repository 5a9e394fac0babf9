"""Model sizes: `tiny` (CPU tests and demos), `small`, and Movie Gen's published dimensions.

One `ModelConfig` bundles everything a generation checkpoint needs to rebuild its modules.
Published figures are cited "Movie Gen" (arXiv 2410.13720).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from reelflow.models.audio_model import AudioConfig
from reelflow.models.flow_matching import FlowMatchingConfig
from reelflow.models.tae import TAEConfig
from reelflow.models.text_encoder import TextEncoderConfig
from reelflow.models.video_transformer import VideoTransformerConfig


@dataclass
class SampleConfig:
    """Pixel-space output format a model was trained for."""

    height: int = 768  # Movie Gen's 768 px stage (1080p comes from a separate upsampler)
    width: int = 768
    fps: int = 16  # Movie Gen trains at >= 16 fps
    # Frames per clip the video model was trained on (a stage checkpoint records its own); None:
    # generation takes its length from the caller.
    frames: int | None = None
    # The model was trained on captions that start with Movie Gen's ``FPS-<n>`` token (n = fps above),
    # so generation prepends it to a prompt that has none; the trainer records it.
    fps_token: bool = False


@dataclass
class ModelConfig:
    name: str
    tae: TAEConfig
    video: VideoTransformerConfig
    text: TextEncoderConfig
    flow: FlowMatchingConfig = field(default_factory=FlowMatchingConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    audio: AudioConfig | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        def build(kind, value):
            if value is None:
                return None
            known = {f.name for f in fields(kind)}
            unknown = set(value) - known
            if unknown:
                raise ValueError(f"unknown {kind.__name__} fields: {sorted(unknown)}")
            return kind(**value)

        return cls(
            name=d["name"],
            tae=build(TAEConfig, d["tae"]),
            video=build(VideoTransformerConfig, d["video"]),
            text=build(TextEncoderConfig, d["text"]),
            flow=build(FlowMatchingConfig, d["flow"]),
            sample=build(SampleConfig, d["sample"]),
            audio=build(AudioConfig, d.get("audio")),
        )


# TAE settings under which small objects on flat backgrounds survive reconstruction (models/tae.py
# explains each). Measured on the synthetic shapes: with Movie Gen's 1e5 outlier weight and unit
# initial posterior noise the TAE decodes every object as background; even at weight 1 the
# outlier penalty holds the object's latents inside 3 sigma and colour is lost (25% of probe
# objects after 800 steps, 100% at weight 0 with per-frame layer norm).
SMALL_OBJECT_TAE = dict(outlier_weight=0.0, mse_weight=1.0, logvar_init=-8.0, norm_groups=1)


def tiny(with_audio: bool = True) -> ModelConfig:
    """Trains on 2 CPU cores in minutes: 64x64 px, 8 fps, 4x TAE compression, 2-layer transformers."""
    tae = TAEConfig(latent_channels=8, base_channels=16, channel_mults=(1, 2, 2), num_res_blocks=1,
                    temporal_downsamples=2, attention=False, tile_latents=4, decode_overlap_latents=2,
                    **SMALL_OBJECT_TAE)
    text = TextEncoderConfig(backbone="minilm", out_dim=64, char_encoder=True, char_dim=32, char_layers=1,
                             char_heads=2, max_length=48, char_max_length=32)
    video = VideoTransformerConfig(latent_channels=8, dim=64, n_layers=2, n_heads=4, ffn_dim=172,
                                   text_dim=text.out_dim, max_frames=16, max_height=16, max_width=16)
    # The audio model sees every video frame (pooled 4x4, with its change from the last): per-latent-
    # frame features span 4 frames (500 ms at 8 fps), too coarse to place a bounce within one frame.
    audio = AudioConfig(sample_rate=16000, n_fft=512, hop_length=256, n_mels=32, dim=64, n_layers=2,
                        n_heads=4, ffn_dim=256, video_features="frames", video_grid=4, video_dim=6 * 4 * 4,
                        # 80 frames (1.28 s): a whole 9-frame, 8 fps sample (71 audio frames) in one window
                        text_dim=text.out_dim, window_frames=80, overlap_frames=16, num_steps=8,
                        # Unguided: on rendered ground-truth video (24 probe clips) guidance 3 put the click
                        # within a frame of the bounce in 67% of clips (some 70 dB too quiet to hear), 1.0
                        # in 92% (BENCHMARKS.md). The sparse clicks overshoot or vanish under guidance.
                        guidance_scale=1.0)
    return ModelConfig(
        name="tiny", tae=tae, video=video, text=text,
        flow=FlowMatchingConfig(num_steps=8, guidance_scale=3.0),
        sample=SampleConfig(height=64, width=64, fps=8),
        audio=audio if with_audio else None,
    )


def small(with_audio: bool = True) -> ModelConfig:
    """A single-GPU research size: 256 px, 16 fps, 8x TAE, ~54M-parameter video transformer."""
    tae = TAEConfig(latent_channels=16, base_channels=64, channel_mults=(1, 2, 4, 4), num_res_blocks=1,
                    temporal_downsamples=3, attention=True, **SMALL_OBJECT_TAE)
    text = TextEncoderConfig(backbone="minilm", out_dim=384, char_encoder=True)
    video = VideoTransformerConfig(latent_channels=16, dim=512, n_layers=12, n_heads=8, ffn_dim=1408,
                                   text_dim=text.out_dim, max_frames=32, max_height=16, max_width=16)
    audio = AudioConfig(sample_rate=16000, n_fft=1024, hop_length=640, n_mels=80, dim=384, n_layers=8,
                        n_heads=6, ffn_dim=1536, video_features="frames", video_grid=4, video_dim=6 * 4 * 4,
                        text_dim=text.out_dim,
                        window_frames=250, overlap_frames=50)
    return ModelConfig(name="small", tae=tae, video=video, text=text,
                       sample=SampleConfig(height=256, width=256, fps=16),
                       audio=audio if with_audio else None)


def moviegen(with_audio: bool = True) -> ModelConfig:
    """Published sizes (Movie Gen): 30B video transformer, 13B audio transformer, 8x TAE with 16
    latent channels. The text backbone must be given a local path (e.g. a T5/UL2 encoder)."""
    tae = TAEConfig()  # defaults are Movie Gen's
    text = TextEncoderConfig(backbone="hf", path=None, out_dim=4096, max_length=256, char_encoder=True,
                             char_dim=1472, char_layers=4, char_heads=8, char_max_length=256)
    video = VideoTransformerConfig(text_dim=text.out_dim)  # defaults are Movie Gen 30B
    audio = AudioConfig(text_dim=text.out_dim, video_dim=tae.latent_channels * 4)  # defaults: Movie Gen 13B
    return ModelConfig(name="moviegen", tae=tae, video=video, text=text,
                       sample=SampleConfig(height=768, width=768, fps=16),
                       audio=audio if with_audio else None)


SIZES = {"tiny": tiny, "small": small, "moviegen": moviegen}


def get_config(name: str, with_audio: bool = True) -> ModelConfig:
    if name not in SIZES:
        raise KeyError(f"unknown model size {name!r}; choose from {sorted(SIZES)}")
    return SIZES[name](with_audio)
