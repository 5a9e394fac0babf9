"""Pipeline stages in NeMo Curator's shape: declare resources, set up once, process records.

A stage maps one input row (a dict) to output rows (the input plus what the stage adds, with
``status``/``reason``). Stages know nothing about Ray: ``pipeline.py`` runs them as Ray Data
operators, and unit tests call ``process`` directly. ``process`` never raises for a bad item;
``run_row`` turns any exception into a ``failed`` row whose reason names the error.
"""

from __future__ import annotations

import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from curation import clip_plan, extract, filters, probe, shots
from curation.policy import Policy
from curation.records import CLIP, FAILED, OK, REJECTED, SCORE_COLUMNS, clip_key
from curation.storage import S3Config, Storage, join


@dataclass(frozen=True)
class StageContext:
    """Everything a stage needs on a worker; small and picklable (no clients, no media)."""

    run_id: str
    output: str
    policy: Policy
    s3: S3Config = field(default_factory=S3Config)
    cache_dir: str = field(default_factory=lambda: str(Path(tempfile.gettempdir()) / "reelflow-cache"))

    @property
    def storage(self) -> Storage:
        return Storage(self.s3)

    def stage_uri(self, stage: str, *parts: str) -> str:
        return join(self.output, "_stages", stage, *parts)


class Stage(ABC):
    name: ClassVar[str]
    input_stage: ClassVar[str]
    # Column of this stage's output rows that names the input row they came from: resume skips
    # inputs whose id already appears there.
    input_id_column: ClassVar[str] = "item_id"
    num_cpus: ClassVar[float] = 1.0
    num_gpus: float = 0.0  # per task/actor; the score stage takes it from the policy
    # Stages with a model to load run as a Ray actor pool so the model loads once per actor.
    uses_actor: ClassVar[bool] = False

    def __init__(self, ctx: StageContext):
        self.ctx = ctx

    def setup(self) -> None:
        """Load models or open clients; called once per worker/actor before the first row."""

    @abstractmethod
    def process(self, row: dict) -> list[dict]:
        """Output rows for one input row."""

    def run_row(self, row: dict) -> list[dict]:
        try:
            out = self.process(row)
        except Exception as e:  # one bad item never stops a stage: it becomes a failed row
            out = [{**row, "status": FAILED, "reason": f"{self.name}: {type(e).__name__}: {e}"}]
        return [{**r, "stage": self.name} for r in out]


class ProbeStage(Stage):
    name = "probe"
    input_stage = "ingest"

    def process(self, row: dict) -> list[dict]:
        try:
            local = self.ctx.storage.localize(row["source_uri"], self.ctx.cache_dir)
        except FileNotFoundError:
            return [{**row, "status": FAILED, "reason": "file not found"}]
        except Exception as e:
            return [{**row, "status": FAILED, "reason": f"cannot fetch source: {type(e).__name__}: {e}"}]
        try:
            p = probe.probe_file(local)
        except probe.ProbeError as e:
            return [{**row, "status": e.status, "reason": e.reason}]
        return [{**row, **p.__dict__, "status": OK, "reason": None}]


class FilterStage(Stage):
    """Video-level basic filters on probed metadata (resolution, aspect, duration)."""

    name = "filter"
    input_stage = "probe"
    num_cpus = 0.25

    def process(self, row: dict) -> list[dict]:
        reason = filters.check_video(row, self.ctx.policy)
        return [{**row, "status": REJECTED if reason else OK, "reason": reason}]


class ShotsStage(Stage):
    name = "shots"
    input_stage = "filter"

    def __init__(self, ctx: StageContext):
        super().__init__(ctx)
        self.uses_actor = ctx.policy.shots.detector == "transnetv2"
        self._transnet = None

    def setup(self) -> None:
        if self.ctx.policy.shots.detector == "transnetv2":
            self._transnet = shots.TransNetV2Detector(self.ctx.policy.shots.transnetv2_threshold)

    def process(self, row: dict) -> list[dict]:
        local = self.ctx.storage.localize(row["source_uri"], self.ctx.cache_dir)
        cfg = self.ctx.policy.shots
        if cfg.detector == "transnetv2":
            if self._transnet is None:
                self.setup()
            found = self._transnet.detect(local)
        else:
            found = shots.detect_adaptive(local, cfg)
        duration = float(row["src_duration_s"])
        found = [(max(0.0, a), min(b, duration)) for a, b in found if min(b, duration) > a]
        if not found:
            found = [(0.0, duration)]
        return [
            {
                **row, "status": OK, "reason": None, "shot_detector": cfg.detector,
                "shot_starts": [round(a, 6) for a, _ in found], "shot_ends": [round(b, 6) for _, b in found],
            }
        ]


class ClipPlanStage(Stage):
    """One video row -> one row per candidate clip (rejected when its shot is too short)."""

    name = "clips"
    input_stage = "shots"
    input_id_column = "parent_id"
    num_cpus = 0.25

    def process(self, row: dict) -> list[dict]:
        shot_list = list(zip(row["shot_starts"], row["shot_ends"]))
        base = {k: v for k, v in row.items() if k not in ("shot_starts", "shot_ends", "shot_detector")}
        out = []
        for c in clip_plan.plan_clips(shot_list, self.ctx.policy.clips):
            out.append(
                {
                    **base, "kind": CLIP, "item_id": clip_key(row["item_id"], c.shot_index, c.clip_index),
                    "parent_id": row["item_id"], "shot_index": c.shot_index, "clip_index": c.clip_index,
                    "start_s": c.start_s, "end_s": c.end_s, "duration_s": c.duration_s,
                    "status": REJECTED if c.reason else OK, "reason": c.reason,
                }
            )
        return out


class ExtractStage(Stage):
    name = "extract"
    input_stage = "clips"

    def process(self, row: dict) -> list[dict]:
        storage = self.ctx.storage
        local = storage.localize(row["source_uri"], self.ctx.cache_dir)
        key = row["item_id"]
        with tempfile.TemporaryDirectory(prefix="reelflow-extract-") as tmp:
            res = extract.extract_clip(
                local, row["start_s"], row["end_s"], tmp, key,
                int(row["src_width"]), int(row["src_height"]), float(row["src_fps"]),
                bool(row["has_audio"]), self.ctx.policy.output,
            )
            clip_uri = self.ctx.stage_uri(self.name, "media", f"{key}.mp4")
            storage.upload_file(res.video_path, clip_uri)
            audio_uri = None
            if res.audio_path is not None:
                audio_uri = self.ctx.stage_uri(self.name, "media", f"{key}.flac")
                storage.upload_file(res.audio_path, audio_uri)
            nbytes = res.video_path.stat().st_size + (res.audio_path.stat().st_size if res.audio_path else 0)
        duration = res.frames / res.fps
        reason = filters.check_clip_duration(duration, self.ctx.policy)
        return [
            {
                **row, "clip_uri": clip_uri, "audio_uri": audio_uri, "width": res.width,
                "height": res.height, "fps": res.fps, "frames": res.frames, "clip_bytes": nbytes,
                "duration_s": round(duration, 6), "status": REJECTED if reason else OK, "reason": reason,
            }
        ]


class ScoreStage(Stage):
    """Decode each extracted clip once at analysis size and rate; run every scorer on those
    frames; apply the policy's quality rules in order. Runs as an actor pool: the OCR, VAD and
    aesthetics models load once per actor."""

    name = "score"
    input_stage = "extract"

    def __init__(self, ctx: StageContext):
        super().__init__(ctx)
        cfg = ctx.policy.scoring
        self.uses_actor = cfg.enabled
        self.num_gpus = cfg.num_gpus
        self._text = self._audio = self._aesthetics = None

    def setup(self) -> None:
        from curation.scoring.aesthetics import AestheticScorer, AestheticsConfig
        from curation.scoring.audio import AudioScorer
        from curation.scoring.text import TextScorer

        cfg = self.ctx.policy.scoring
        if not cfg.enabled:
            return
        self._text = TextScorer().setup() if cfg.text.enabled else None
        self._audio = AudioScorer().setup()
        m = cfg.aesthetics_model
        aest = AestheticScorer(AestheticsConfig(clip_model=m.clip_model, clip_checkpoint=m.clip_checkpoint,
                                                head_checkpoint=m.head_checkpoint))
        self._aesthetics = aest.setup() if aest.enabled and cfg.aesthetics.enabled else None

    def process(self, row: dict) -> list[dict]:
        from curation.scoring import borders, jitter, motion, technical
        from curation.scoring.frames import decode_for_analysis
        from curation.scoring.rules import apply_rules, verdict

        cfg = self.ctx.policy.scoring
        if not cfg.enabled:
            return [{**row, "status": OK, "reason": None}]
        if self._audio is None:
            self.setup()
        storage = self.ctx.storage
        video = storage.localize(row["clip_uri"], self.ctx.cache_dir)
        audio = storage.localize(row["audio_uri"], self.ctx.cache_dir) if row.get("audio_uri") else None
        clip = decode_for_analysis(video, short_side=cfg.analysis.short_side, fps=cfg.analysis.fps,
                                   audio_path=audio)
        scores: dict[str, float] = {}
        scores.update(motion.score(clip))
        scores.update(jitter.score(clip))
        b = borders.score(clip)
        scores.update(b)
        scores.update(technical.score(clip, borders=b))
        if self._text is not None:
            scores.update(self._text.score(clip))
        if clip.audio is not None:
            scores.update(self._audio.score(clip))
        else:
            scores["audio_has_audio"] = 0.0
        if self._aesthetics is not None:
            scores.update(self._aesthetics.score(clip))
        rejected, reason, failures = verdict(apply_rules(scores, cfg))
        known = {c: float(scores[c]) for c in SCORE_COLUMNS if c in scores}
        return [{**row, **known, "rule_failures": failures, "status": REJECTED if rejected else OK, "reason": reason}]


MEDIA_STAGES: list[type[Stage]] = [ProbeStage, FilterStage, ShotsStage, ClipPlanStage, ExtractStage, ScoreStage]
