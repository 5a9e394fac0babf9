"""Burned-in text: PP-OCR (rapidocr-onnxruntime) on a few sampled analysis frames.

Movie Gen keeps a clip only if *every* sampled frame's word-detection × recognition score is
below 0.6 (Movie Gen), i.e. ``text_conf_max < 0.6`` here. This module only measures; the policy
decides.

Scores (``TextScorer.score``):

==================== ======== ======= =====================================================
name                 unit     range   meaning
==================== ======== ======= =====================================================
text_conf_max        prob.    [0, 1]  max over every word box on every sampled frame of
                                      detection score × recognition score; 0 when no word
                                      was detected (Movie Gen's text rule reads this)
text_area_max        fraction [0, 1]  max over sampled frames of the frame area covered by
                                      the union of readable text boxes
text_area_mean       fraction [0, 1]  the same, averaged over the sampled frames
text_boxes_max       count    >= 0    most readable text boxes on one sampled frame
text_frames_sampled  count    >= 1    how many frames were OCR'd (fewer than sampled when
                                      OCR stopped early: the text rule already broken)
==================== ======== ======= =====================================================

A box's *detection score* is the DB detector's mean text probability inside the box (boxes
below ``box_thresh`` = 0.5 are never proposed); its *recognition score* is the CTC recogniser's
mean character confidence. A *word box* is one whose recognised string has at least one letter
or digit (any script, ``str.isalnum``): the detector also proposes boxes on texture and shapes
that the recogniser reads as a lone symbol (a bus-roof hatch read as "■" at 0.54 in the bikes
sample), which are not words. "Readable" word boxes (counted in the area and box scores) also
have a recognition score >= ``min_rec_score`` (0.5, RapidOCR's own ``text_score`` default).

Frames: one every ``every_s`` = 2 s of the clip (the centres of equal segments), at least 3 and
at most 8. On-screen text worth rejecting (subtitles, captions, title cards, lower thirds)
stays up for >= ~2 s, so a 2 s spacing sees it; 3 frames give short clips a start, middle and
end look; 8 caps the cost of a 16 s clip (Movie Gen's longest) at 8 OCR passes (~0.25 s each
on one CPU core at the default detector size).

Detector input: the analysis frame (short side 256 by default) is resized so its short side is
``det_short_side`` = 512 (a 2× upscale): at 256 the detector misses text shorter than ~10 px
(e.g. 1080p subtitles), at 512 it finds ~7 px text, and 736 (RapidOCR's default) costs 2× more
for no gain on 256-px frames. The text-direction classifier is not run: burned-in text in video
is upright, and recognition scores of upright crops are what the rule reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from reelflow.curation.scoring.frames import AnalysisClip

TEXT_SCORE_NAMES = ("text_conf_max", "text_area_max", "text_area_mean", "text_boxes_max", "text_frames_sampled")


@dataclass(frozen=True)
class TextConfig:
    every_s: float = 2.0  # one OCR'd frame per this many seconds of clip
    min_frames: int = 3
    max_frames: int = 8
    det_short_side: int = 512  # detector input short side (analysis frames are upscaled to it)
    box_thresh: float = 0.5  # DB detector: minimum mean text probability of a proposed box
    min_rec_score: float = 0.5  # a box counts as readable text from this recognition score
    threads: int = 1  # onnxruntime intra-op threads per session (one actor ≈ one core)


def sample_indices(n_frames: int, duration_s: float, cfg: TextConfig) -> list[int]:
    """Indices of the frames to OCR: centres of ``k`` equal segments of the clip."""
    k = int(round(duration_s / cfg.every_s))
    k = max(cfg.min_frames, min(cfg.max_frames, k))
    k = max(1, min(k, n_frames))
    return sorted({min(n_frames - 1, int(math.floor((i + 0.5) * n_frames / k))) for i in range(k)})


@dataclass
class TextBox:
    quad: np.ndarray  # (4, 2) float32 corner points in frame pixels (clockwise from top-left)
    det_score: float
    text: str
    rec_score: float

    @property
    def conf(self) -> float:
        return self.det_score * self.rec_score

    @property
    def is_word(self) -> bool:
        return any(ch.isalnum() for ch in self.text)


class TextScorer:
    """PP-OCR text scores over an ``AnalysisClip``. The OCR engine (three ONNX sessions, weights
    shipped inside the rapidocr-onnxruntime wheel) is built on first use, once per process or
    actor; call ``setup()`` to build it eagerly."""

    def __init__(self, cfg: TextConfig | None = None):
        self.cfg = cfg or TextConfig()
        self._engine = None

    def setup(self) -> "TextScorer":
        if self._engine is None:
            from rapidocr_onnxruntime import RapidOCR

            self._engine = RapidOCR(
                det_limit_side_len=self.cfg.det_short_side,
                det_limit_type="min",
                det_box_thresh=self.cfg.box_thresh,
                use_cls=False,
                intra_op_num_threads=self.cfg.threads,
                inter_op_num_threads=1,
            )
        return self

    def ocr_frame(self, rgb: np.ndarray) -> list[TextBox]:
        """All text boxes the detector proposes on one RGB uint8 frame, with both scores.

        Runs RapidOCR's detector, crop and recogniser steps directly because its ``__call__``
        drops the detection scores that Movie Gen's rule multiplies in.
        """
        self.setup()
        eng = self._engine
        det = eng.text_det
        img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)  # PP-OCR models take BGR (cv2.imread order)
        h, w = img.shape[:2]
        pre = det.get_preprocess(max(h, w))(img)
        if pre is None:
            return []
        preds = det.infer(pre)[0]
        boxes, scores = det.postprocess_op(preds, (h, w))
        quads, det_scores = [], []
        for box, s in zip(boxes, scores):  # RapidOCR's filter_tag_det_res, keeping the scores
            q = det.clip_det_res(det.order_points_clockwise(np.asarray(box, np.float32)), h, w)
            if int(np.linalg.norm(q[0] - q[1])) <= 3 or int(np.linalg.norm(q[0] - q[3])) <= 3:
                continue
            quads.append(q)
            det_scores.append(float(s))
        if not quads:
            return []
        crops = eng.get_crop_img_list(img, quads)
        rec, _ = eng.text_rec(crops)
        return [TextBox(q, d, str(r[0]), float(r[1])) for q, d, r in zip(quads, det_scores, rec)]

    def sample(self, clip: AnalysisClip) -> np.ndarray:
        """The frames ``score`` would OCR (so a caller can ship just these to a model actor)."""
        return clip.frames[sample_indices(len(clip.frames), clip.duration_s, self.cfg)]

    def score(self, clip: AnalysisClip) -> dict[str, float]:
        return self.score_frames(self.sample(clip))

    def score_frames(self, frames: np.ndarray, stop_at: float | None = None) -> dict[str, float]:
        """Text scores over already-sampled RGB uint8 frames (N, H, W, 3). ``stop_at``: stop after
        the first frame whose ``text_conf_max`` reaches it (the text rule's threshold: the clip is
        rejected whatever the other frames hold); the scores are then over the frames OCR'd, and
        ``text_frames_sampled`` says how many."""
        conf_max, areas, boxes_max = 0.0, [], 0
        for frame in frames:
            if stop_at is not None and conf_max >= stop_at:
                break
            boxes = [b for b in self.ocr_frame(frame) if b.is_word]
            if boxes:
                conf_max = max(conf_max, max(b.conf for b in boxes))
            readable = [b for b in boxes if b.rec_score >= self.cfg.min_rec_score]
            areas.append(_union_area_fraction([b.quad for b in readable], frames.shape[1:3]))
            boxes_max = max(boxes_max, len(readable))
        return {
            "text_conf_max": float(conf_max),
            "text_area_max": float(max(areas)),
            "text_area_mean": float(np.mean(areas)),
            "text_boxes_max": float(boxes_max),
            "text_frames_sampled": float(len(areas)),
        }


def _union_area_fraction(quads: list[np.ndarray], hw: tuple[int, int]) -> float:
    if not quads:
        return 0.0
    mask = np.zeros(hw, np.uint8)
    cv2.fillPoly(mask, [np.round(q).astype(np.int32) for q in quads], 1)
    return float(mask.mean())
