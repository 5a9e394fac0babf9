"""Published Movie Gen sizes, counted on the meta device (no memory is allocated).

Counted: the flow-matching transformer itself — patch/input embedding, positional tables,
time embedder and its shared adaLN modulation, text projection to model width, all blocks and
the output layer. Not counted: text encoders, the TAE, the audio front end.
"""

import torch

from reelflow.models.audio_model import AudioTransformer
from reelflow.models.configs import get_config
from reelflow.models.video_transformer import VideoTransformer, count_params


def test_published_sizes_on_meta_device():
    cfg = get_config("moviegen")
    assert (cfg.video.n_layers, cfg.video.dim, cfg.video.ffn_dim, cfg.video.n_heads) == (48, 6144, 16384, 48)
    assert (cfg.audio.n_layers, cfg.audio.dim, cfg.audio.ffn_dim) == (36, 4608, 18432)
    with torch.device("meta"):
        video = VideoTransformer(cfg.video)
        audio = AudioTransformer(cfg.audio)
    assert all(p.is_meta for p in video.parameters()) and all(p.is_meta for p in audio.parameters())
    n_video, n_audio = count_params(video), count_params(audio)
    print(f"\nMovie Gen video transformer: {n_video / 1e9:.2f}B (published 30B); "
          f"audio transformer: {n_audio / 1e9:.2f}B (published 13B)")
    assert abs(n_video - 30e9) / 30e9 < 0.05  # 29.36B
    assert abs(n_audio - 13e9) / 13e9 < 0.05  # 12.45B


def test_tiny_is_tiny_and_small_is_between():
    tiny, small = get_config("tiny"), get_config("small")
    with torch.device("meta"):
        n_tiny = count_params(VideoTransformer(tiny.video))
        n_small = count_params(VideoTransformer(small.video))
    assert n_tiny < 1e6 < n_small < 1e9
