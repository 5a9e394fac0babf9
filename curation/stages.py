"""The source and per-item stages (``stage_unit.Stage``): ingest, then probe .. caption.

A per-item stage (``ItemStage``) maps one input row (a dict) to output rows (the input plus what
the stage adds, with ``status``/``reason``). Stages know nothing about Ray: ``pipeline.py`` runs
them as Ray Data operators, and unit tests call ``process`` directly. ``process`` never raises for
a bad item; ``run_row`` turns any exception into a ``failed`` row whose reason names the error.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import tempfile
import time
from abc import abstractmethod
from typing import ClassVar

import numpy as np

from reelflow.curation import clip_plan, extract, filters, item_rules, probe, shots
from reelflow.curation.failures import deadline, describe, is_transient, redact
from reelflow.curation.policy import Policy
from reelflow.curation.records import ANALYSIS_COLUMN, CLIP, FAILED, OK, REJECTED, SCORE_COLUMNS, clip_key
from reelflow.curation.stage_unit import Resources, Stage, StageContext
from reelflow.curation.storage import trim_cache

log = logging.getLogger(__name__)


def guarded(stage: "ItemStage", row: dict, fn) -> list[dict]:
    """Run ``fn(row)`` under ``limits.item_timeout_s``; retry transient errors with backoff; turn
    what still fails into one ``failed`` row with ``retryable`` set. Worker caches are trimmed
    after every item."""
    policy = stage.ctx.policy
    attempts = policy.runtime.item_retries + 1
    try:
        for attempt in range(attempts):
            try:
                with deadline(policy.limits.item_timeout_s, "item"):
                    out = fn(row)
                return out if isinstance(out, list) else [out]
            except Exception as e:  # noqa: BLE001 - every error becomes the item's ledger reason
                transient = is_transient(e)
                if transient and attempt + 1 < attempts:
                    time.sleep(policy.runtime.item_retry_backoff_s * 2 ** attempt)
                    continue
                why = describe(e)
                if transient:
                    why += f" (transient, after {attempts} attempts; a resume retries it)"
                return [{**row, "status": FAILED, "reason": f"{stage.name}: {why}", "retryable": transient}]
    finally:
        trim_cache(stage.ctx.cache_dir, policy.limits.cache_max_bytes)
    raise AssertionError("unreachable")


class IngestStage(Stage):
    """The run's inputs, listed from its source (a directory, an ``s3://`` prefix or a manifest),
    one row per video with its licence judged (``sources``). Written once: a resume reuses it.
    The Ray adapter lists small sources in the driver; a large manifest, directory or prefix is
    listed and judged by the workers (``ingest_stage``)."""

    name = "ingest"
    shape = "source"
    input_stage = None

    def own_expectations(self, expected_inputs: set[str]) -> list:
        import great_expectations.expectations as gxe

        return [gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=["video"])]


class ItemStage(Stage):
    """A stage that answers each input row on its own (``process``), so any worker can take any
    row and a resume does only the rows its table does not answer yet."""

    shape = "item"
    input_stage: ClassVar[str]
    cpus: ClassVar[float] = 1.0  # per task or actor (``resources``)
    # Stages with a separate CPU operator (``run_analyze``) in front of their actor pool.
    has_cpu_operator: ClassVar[bool] = False
    # Rows per Ray task; None: the policy's ``runtime.batch_size`` (1 by default, so one slow video
    # never holds others back). Stages that only read metadata take many rows a task: one row a task
    # cost the demo's filter and clip-plan stages 12-16 s each for 166 rows of microseconds' work.
    rows_per_task: ClassVar[int | None] = None

    def resources(self) -> Resources:
        return Resources(cpus=self.cpus)

    @abstractmethod
    def process(self, row: dict) -> list[dict]:
        """Output rows for one input row."""

    def run_row(self, row: dict) -> list[dict]:
        """``process`` under the item's timeout, with transient errors retried; never raises.

        One bad item never stops a stage: an exception becomes a ``failed`` row (``retryable``
        when the error was of the moment), and a passed row that breaks a range its gate checks
        is ``rejected`` here with the rule and the value (``item_rules``)."""
        out = guarded(self, row, self.process)
        policy = self.ctx.policy
        rows = []
        for r in out:
            r = {**r, "stage": self.name}
            if r.get("status") == OK:
                r["retryable"] = None
                why = item_rules.check_row(self.name, r, policy)
                if why:
                    r.update(status=REJECTED, reason=why)
            elif r.get("status") == FAILED:
                r["retryable"] = bool(r.get("retryable"))
            else:
                r["retryable"] = None
            r["reason"] = redact(r.get("reason"))
            rows.append(r)
        return rows


class ProbeStage(ItemStage):
    name = "probe"
    input_stage = "ingest"
    # ~30 ms of ffprobe a file: 8 a task (a hung file holds 7 others back for at most item_timeout_s)
    rows_per_task = 8

    def process(self, row: dict) -> list[dict]:
        limits = self.ctx.policy.limits
        storage = self.ctx.storage
        uri = row["source_uri"]
        try:
            # Size first: a file over the limit is never downloaded or opened.
            size = storage.size(uri)
        except FileNotFoundError:
            return [{**row, "status": FAILED, "reason": "probe: file not found", "retryable": False}]
        except Exception as e:  # a missing S3 key is the item's fault; throttling is retried (run_row)
            if is_transient(e):
                raise
            return [{**row, "status": FAILED, "reason": f"probe: cannot read source: {type(e).__name__}: {e}",
                     "retryable": False}]
        if size > limits.max_file_bytes:
            return [{**row, "status": REJECTED, "size_bytes": size,
                     "reason": f"probe: file_bytes={size} over limits.max_file_bytes={limits.max_file_bytes}"}]
        local = storage.localize(uri, self.ctx.cache_dir)
        try:
            with deadline(limits.probe_timeout_s, "probe"):
                p = probe.probe_file(local)
        except probe.ProbeError as e:
            return [{**row, "status": e.status, "reason": f"probe: {e.reason}", "retryable": False}]
        probed = {**row, **p.__dict__}
        # The ranges the gates check first (fps, sides, duration), then the limits no column holds.
        reason = item_rules.check_row(self.name, probed, self.ctx.policy) or filters.check_limits(probed, limits)
        return [{**probed, "status": REJECTED if reason else OK, "reason": reason}]


class FilterStage(ItemStage):
    """Video-level basic filters on probed metadata (resolution, aspect, duration)."""

    name = "filter"
    input_stage = "probe"
    cpus = 0.25
    rows_per_task = 256

    def process(self, row: dict) -> list[dict]:
        reason = filters.check_video(row, self.ctx.policy)
        return [{**row, "status": REJECTED if reason else OK, "reason": reason}]


class ShotsStage(ItemStage):
    name = "shots"
    input_stage = "filter"

    def __init__(self, ctx: StageContext):
        super().__init__(ctx)
        self._transnet = None

    def resources(self) -> Resources:
        # TransNetV2's weights load once per actor; the default detector needs no model.
        return Resources(cpus=self.cpus, loads_model=self.ctx.policy.shots.detector == "transnetv2")

    def setup(self) -> None:
        if self.ctx.policy.shots.detector == "transnetv2":
            self._transnet = shots.TransNetV2Detector(self.ctx.policy.shots.transnetv2_threshold)

    def process(self, row: dict) -> list[dict]:
        """One decode of the source: its cuts, and its analysis frames for the score stage."""
        from reelflow.curation import source_analysis as sa

        local = self.ctx.storage.localize(row["source_uri"], self.ctx.cache_dir)
        cfg = self.ctx.policy.shots
        if cfg.detector == "transnetv2":
            if self._transnet is None:
                self.setup()
            detector = self._transnet.stream()
        else:
            detector = shots.AdaptiveCuts(cfg)
        sinks = [detector]
        analysis = self.ctx.policy.scoring.analysis
        writer = audio = None
        if self.ctx.policy.scoring.enabled and analysis.keep_source_frames:
            uri = sa.analysis_uri(self.ctx.output, row["item_id"])
            folder = sa.staging_folder(self.ctx.cache_dir, uri)
            writer = sa.AnalysisWriter(folder, analysis.short_side, analysis.fps)
            sinks.append(writer)
            if row.get("has_audio"):
                audio = sa.SourceAudio(local, folder / sa.AUDIO_FILE, self.ctx.policy.output.audio_sample_rate)
        try:
            decoded = sa.decode_source(local, sinks)
            if writer is not None:
                audio_error = audio.wait() if audio is not None else None
                writer.close(decoded.end_time, audio=audio is not None)
                if audio_error is None:
                    sa.publish(writer.folder, self.ctx.storage, uri)
                else:  # the score stage decodes each span and records what fails there, per candidate
                    log.warning("shots: %s: no analysis frames kept (%s)", row["item_id"], audio_error)
                    shutil.rmtree(writer.folder, ignore_errors=True)
        except BaseException:
            if audio is not None:
                audio.kill()
            if writer is not None:
                writer.abort()
                shutil.rmtree(writer.folder, ignore_errors=True)
            raise
        if cfg.detector == "transnetv2":
            found = detector.shots()
        else:
            found = detector.shots(decoded.end_time)
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


class ClipPlanStage(ItemStage):
    """One video row -> one row per candidate clip (rejected when its shot is too short)."""

    name = "clips"
    input_stage = "shots"
    input_id_column = "parent_id"
    cpus = 0.25
    rows_per_task = 256

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


class ExtractStage(ItemStage):
    """Encode the clips that passed the quality rules and dedup (judge before encode): a rejected
    or duplicate candidate never gets an mp4."""

    name = "extract"
    input_stage = "dedup"

    def process(self, row: dict) -> list[dict]:
        storage = self.ctx.storage
        local = storage.localize(row["source_uri"], self.ctx.cache_dir)
        key = row["item_id"]
        with tempfile.TemporaryDirectory(prefix="reelflow-extract-") as tmp:
            res = extract.extract_clip(
                local, row["start_s"], row["end_s"], tmp, key,
                int(row["src_width"]), int(row["src_height"]), float(row["src_fps"]),
                bool(row["has_audio"]), self.ctx.policy.output,
                timeout_s=self.ctx.policy.limits.call_timeout_s,
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


def clip_embedder(policy: Policy):
    """The open_clip image embedder of ``policy.embeddings``, loaded; None without weights."""
    from reelflow.curation.captioning.clip_model import ClipConfig, ClipEmbedder

    e, c = policy.embeddings, policy.captions
    if not e.clip_checkpoint:
        return None
    return ClipEmbedder(ClipConfig(model=e.clip_model, checkpoint=e.clip_checkpoint, model_config=e.clip_model_config,
                                   n_frames=e.frames, top_k=c.tags_top_k, min_prob=c.tag_min_prob)).setup()


class ScoreStage(ItemStage):
    """Score each candidate clip from one analysis decode of its span of the source, then apply the
    policy's quality rules. It runs before anything is encoded (judge before encode): only the
    clips it and dedup keep are extracted.

    Two Ray Data operators (issue #3, item 4):

    * ``analyze`` — the fused CPU operator, run as plain tasks: the one decode at analysis size
      and rate, then every CPU scorer over those frames (motion flow, static, jitter, borders,
      sharpness/exposure). It ships on only what the models need: the few frames OCR and the
      aesthetics model read, and the 16 kHz audio (``ANALYSIS_COLUMN``, a pickled payload).
    * ``process`` — the model operator, run as an actor pool so the OCR, VAD and CLIP models load
      once per actor (``num_gpus`` per actor from the policy); it scores the payload and applies
      the rules. Called on an ``extract`` row directly (unit tests), it runs ``analyze`` first.
    """

    name = "score"
    input_stage = "clips"
    has_cpu_operator: ClassVar[bool] = True

    def __init__(self, ctx: StageContext):
        super().__init__(ctx)
        self._text = self._audio = self._aesthetics = self._tags = self._embedder = None
        self._frames = None  # the current source's analysis frames (``_source_frames``)
        self._frames_for: str | None = None

    def resources(self) -> Resources:
        # The model operator: OCR, VAD, aesthetics and CLIP load once per actor (GPUs from the
        # policy). Scoring switched off passes rows on with no model to load.
        cfg = self.ctx.policy.scoring
        if not cfg.enabled:
            return Resources(cpus=self.cpus)
        return Resources(cpus=self.cpus, gpus=cfg.num_gpus, loads_model=True, actors=cfg.actors)

    def own_expectations(self, expected_inputs: set[str]) -> list:
        import great_expectations.expectations as gxe

        from reelflow.curation.gates import OK_ROWS, scored_expectations, where

        policy = self.ctx.policy
        if not policy.scoring.enabled:
            return []
        ex = [*scored_expectations(policy),
              gxe.ExpectColumnValuesToNotBeNull(column="content_signature", **where(OK_ROWS)),
              gxe.ExpectColumnValuesToNotBeNull(column="phashes", **where(OK_ROWS))]
        if policy.embeddings.clip_checkpoint:
            ex.append(gxe.ExpectColumnValuesToNotBeNull(column="clip_embedding", **where(OK_ROWS)))
        return ex

    def setup(self) -> None:
        from reelflow.curation.scoring.aesthetics import AestheticsConfig, AestheticScorer
        from reelflow.curation.scoring.audio import AudioScorer
        from reelflow.curation.scoring.audio_tags import AudioTagger, AudioTaggerConfig
        from reelflow.curation.scoring.text import TextScorer

        cfg = self.ctx.policy.scoring
        if not cfg.enabled:
            return
        self._text = TextScorer().setup() if cfg.text.enabled else None
        self._audio = AudioScorer().setup()
        m = cfg.aesthetics_model
        aest = AestheticScorer(AestheticsConfig(clip_model=m.clip_model, clip_checkpoint=m.clip_checkpoint,
                                                head_checkpoint=m.head_checkpoint))
        self._aesthetics = aest.setup() if aest.enabled and cfg.aesthetics.enabled else None
        tags = AudioTagger(AudioTaggerConfig(model_path=cfg.audio_tags_model.model_path))
        self._tags = tags.setup() if tags.enabled and cfg.music.enabled else None
        self._embedder = clip_embedder(self.ctx.policy)

    # -- the fused CPU operator ---------------------------------------------------------------
    def analyze(self, row: dict) -> dict:
        """Decode once; CPU scores into the row, model inputs into ``ANALYSIS_COLUMN``."""
        from reelflow.curation.captioning.clip_model import frame_indices
        from reelflow.curation.dedup.signatures import content_signature, frame_phashes
        from reelflow.curation.scoring import borders, jitter, motion, technical
        from reelflow.curation.scoring.camera_motion import CameraMotionConfig, classify_camera_motion
        from reelflow.curation.scoring.frames import decode_for_analysis
        from reelflow.curation.scoring.rules import apply_rules, verdict
        from reelflow.curation.scoring.text import TextConfig, sample_indices

        cfg = self.ctx.policy.scoring
        storage = self.ctx.storage
        if row.get("clip_uri"):  # an already encoded clip (scored on its own, e.g. by a test)
            video = storage.localize(row["clip_uri"], self.ctx.cache_dir)
            audio = storage.localize(row["audio_uri"], self.ctx.cache_dir) if row.get("audio_uri") else None
            planned = (float(row["end_s"]) - float(row["start_s"])
                       if row.get("end_s") is not None and row.get("start_s") is not None else None)
            clip = decode_for_analysis(video, 0.0, planned,
                                       short_side=cfg.analysis.short_side, fps=cfg.analysis.fps,
                                       audio_path=audio)
        elif (frames_of_source := self._source_frames(row.get("parent_id"))) is not None:
            # The shots stage's one decode of the source: this candidate's window of it.
            clip = frames_of_source.clip(float(row["start_s"]), float(row["end_s"]), int(row.get("rotation") or 0))
        else:  # the candidate's span of the source, upright as the extracted clip will be
            source = storage.localize(row["source_uri"], self.ctx.cache_dir)
            clip = decode_for_analysis(source, float(row["start_s"]), float(row["end_s"]),
                                       short_side=cfg.analysis.short_side, fps=cfg.analysis.fps,
                                       rotation=int(row.get("rotation") or 0),
                                       clip_fps=self.ctx.policy.output.fps,
                                       source_audio_rate=self.ctx.policy.output.audio_sample_rate)
        # The cheap scores first (frame differences, borders, sharpness, exposure); in lazy mode a
        # clip they already reject gets no flow, no camera label and no model scores: its verdict
        # cannot change (a rule that rejects stays broken whatever else is measured).
        scores: dict[str, float] = {}
        scores.update(jitter.score(clip))
        b = borders.score(clip)
        scores.update(b)
        scores.update(technical.score(clip, borders=b))
        still = motion.still_scores(clip)
        scores.update(still)
        rejected = cfg.skip_models_after_reject and verdict(apply_rules(scores, cfg))[0]
        cam = None
        if not rejected:
            pairs, flows = motion.pair_flows(clip.gray)
            scores.update(motion.score(clip, flows=flows, still=still))
            cam = classify_camera_motion(flows, motion.effective_fps(clip), clip.gray, pairs,
                                         CameraMotionConfig(min_confidence=self.ctx.policy.captions.camera_min_confidence))
            del flows
        frames = clip.frames
        payload = {
            "text_frames": frames[sample_indices(len(frames), clip.duration_s, TextConfig())]
            if cfg.text.enabled and not rejected else None,
            "middle_frame": frames[len(frames) // 2] if cfg.aesthetics_model.head_checkpoint and not rejected else None,
            "embed_frames": frames[frame_indices(len(frames), self.ctx.policy.embeddings.frames)]
            if self.ctx.policy.embeddings.clip_checkpoint and not rejected else None,
            "audio": clip.audio, "sample_rate": clip.sample_rate,
        }
        signature = {
            "content_signature": content_signature(frames),
            "phashes": [int(h) for h in frame_phashes(frames)],
            "camera_motion": cam.label if cam else None, "camera_confidence": cam.confidence if cam else None,
        }
        return {**row, **scores, **signature, "status": OK, "reason": None,
                ANALYSIS_COLUMN: pickle.dumps(payload, protocol=5)}

    def _source_frames(self, source_id: str | None):
        """The analysis frames the shots stage kept of ``source_id`` (the last source's stay open:
        a task's candidates come in source order), or None where there are none."""
        from reelflow.curation.source_analysis import SourceFrames, analysis_uri

        if not source_id or not self.ctx.policy.scoring.analysis.keep_source_frames:
            return None
        if self._frames_for != source_id:
            self._frames = SourceFrames.open(self.ctx.storage, analysis_uri(self.ctx.output, source_id),
                                             self.ctx.cache_dir)
            self._frames_for = source_id
        return self._frames

    def run_analyze(self, row: dict) -> dict:
        """``analyze`` guarded like ``run_row``: a clip it cannot analyse is passed on failed (the
        model operator records it as is)."""
        out = guarded(self, row, self.analyze)[0]
        if out.get("status") == FAILED:
            return {**out, "stage": self.name, ANALYSIS_COLUMN: None}
        return out

    # -- the model operator -------------------------------------------------------------------
    def process(self, row: dict) -> list[dict]:
        from reelflow.curation.scoring.rules import apply_rules, verdict

        cfg = self.ctx.policy.scoring
        if not cfg.enabled:
            return [{**row, "status": OK, "reason": None}]
        if row.get("status") == FAILED:  # the CPU operator could not analyse it
            return [row]
        if row.get(ANALYSIS_COLUMN) is None:
            row = self.analyze(row)
        if self._audio is None:
            self.setup()
        payload = pickle.loads(row[ANALYSIS_COLUMN])
        scores = {c: row[c] for c in SCORE_COLUMNS if row.get(c) is not None}
        # Lazy mode: the expensive model scorers only see clips the cheap rules kept.
        cheap_reject = cfg.skip_models_after_reject and verdict(apply_rules(scores, cfg))[0]
        tags = None
        if self._text is not None and not cheap_reject and payload["text_frames"] is not None:
            # Lazy mode stops OCR at the first frame whose text already breaks the text rule.
            rule = cfg.text
            stop = rule.max if cfg.skip_models_after_reject and rule.enabled and not rule.score_only else None
            scores.update(self._text.score_frames(payload["text_frames"], stop_at=stop))
        if payload["audio"] is not None:
            scores.update(self._audio.score_audio(payload["audio"], payload["sample_rate"]))
            if self._tags is not None and len(payload["audio"]):
                probs = self._tags.window_probs(payload["audio"], payload["sample_rate"])
                scores.update(self._tags.scores_from_probs(probs))
                tags = "; ".join(f"{name}={p:.2f}" for name, p in self._tags.top_from_probs(probs, 3))
        else:
            scores["audio_has_audio"] = 0.0
        if self._aesthetics is not None and not cheap_reject:
            scores["aesthetic_score"] = self._aesthetics.score_frame(payload["middle_frame"])
        embedding = None
        if self._embedder is not None and not cheap_reject:
            embedding = self._embedder.embed_frames(payload["embed_frames"], n=len(payload["embed_frames"])).tolist()
        rejected, reason, failures = verdict(apply_rules(scores, cfg))
        known = {c: float(scores[c]) for c in SCORE_COLUMNS if c in scores}
        out = {k: v for k, v in row.items() if k != ANALYSIS_COLUMN}
        return [{**out, **known, "audio_tags": tags, "clip_embedding": embedding, "rule_failures": failures,
                 "status": REJECTED if rejected else OK, "reason": reason}]


class CaptionStage(ItemStage):
    """Caption each unique clip in Movie Gen's shape: ``FPS-<n>``, a camera-motion prefix for a
    confident label, then a description (the configured captioner: the template over the source's
    title/description, zero-shot CLIP tags and the whisper transcript, or a VLM by path); and
    embed the caption with MiniLM for concept balancing.

    Runs after dedup and extract, so the costly models (whisper, a VLM) see each kept clip once. An actor pool:
    whisper, CLIP's text tower, MiniLM and a VLM load once per actor. The camera label and the CLIP
    image embedding come from the score stage's decode; only a VLM captioner decodes frames again.
    """

    name = "caption"
    input_stage = "extract"

    def __init__(self, ctx: StageContext):
        super().__init__(ctx)
        self._whisper = self._embedder = self._text = self._captioner = None
        self._needs_frames = False

    def resources(self) -> Resources:
        cfg = self.ctx.policy.captions
        return Resources(cpus=self.cpus, gpus=cfg.num_gpus, loads_model=True, actors=cfg.actors)

    def own_expectations(self, expected_inputs: set[str]) -> list:
        import great_expectations.expectations as gxe

        from reelflow.curation.gates import OK_ROWS, where

        if not self.ctx.policy.captions.enabled:
            return []
        return [gxe.ExpectColumnValuesToMatchRegex(column="caption", regex=r"^FPS-\d+ \S", **where(OK_ROWS)),
                gxe.ExpectColumnValuesToNotBeNull(column="caption_embedding", **where(OK_ROWS))]

    def setup(self) -> None:
        from reelflow.curation.captioning.assemble import CaptionConfig
        from reelflow.curation.captioning.captioner import VLMCaptioner, load_captioner
        from reelflow.curation.captioning.text_embed import TextEmbedConfig, TextEmbedder
        from reelflow.curation.captioning.transcribe import TranscribeConfig, Transcriber

        cfg = self.ctx.policy.captions
        device = "cuda" if cfg.num_gpus else "cpu"
        if cfg.whisper_checkpoint:
            self._whisper = Transcriber(TranscribeConfig(checkpoint=cfg.whisper_checkpoint, device=device)).setup()
        self._embedder = clip_embedder(self.ctx.policy)
        self._text = TextEmbedder(TextEmbedConfig(device=device)).setup()
        captioner = load_captioner(cfg.captioner, cfg.captioner_model, device,
                                   CaptionConfig(min_camera_confidence=cfg.camera_min_confidence, max_words=cfg.max_words))
        self._captioner = captioner.setup() if hasattr(captioner, "setup") else captioner
        self._needs_frames = isinstance(captioner, VLMCaptioner) or getattr(captioner, "needs_frames", False)

    def process(self, row: dict) -> list[dict]:
        from reelflow.curation.captioning.captioner import CaptionRequest

        cfg = self.ctx.policy.captions
        if self._text is None:
            self.setup()
        out: dict = {"transcript": None, "transcript_language": None, "transcript_segments": None, "tags": None}
        if self._whisper is not None and row.get("audio_has_speech") == 1.0 and row.get("audio_uri"):
            t = self._whisper.transcribe(str(self.ctx.storage.localize(row["audio_uri"], self.ctx.cache_dir)))
            out.update(transcript=t.text.strip() or None, transcript_language=t.language,
                       transcript_segments=json.dumps(t.segments))
        tags: list[tuple[str, float]] = []
        if self._embedder is not None and row.get("clip_embedding") is not None:
            tags = self._embedder.zero_shot_tags(np.asarray(row["clip_embedding"], np.float32), cfg.taxonomy)
            out["tags"] = "; ".join(f"{t}={p:.2f}" for t, p in tags) or None
        frames = None
        if self._needs_frames:  # a VLM looks at the clip itself
            from reelflow.curation.scoring.frames import decode_for_analysis

            video = self.ctx.storage.localize(row["clip_uri"], self.ctx.cache_dir)
            frames = decode_for_analysis(video, short_side=cfg.vlm_short_side, fps=1.0).frames
        request = CaptionRequest(
            fps=float(row["fps"]), duration_s=float(row["duration_s"]), frames=frames,
            camera_label=row.get("camera_motion"), camera_confidence=float(row.get("camera_confidence") or 0.0),
            title=row.get("title"), description=row.get("description"), tags=tags, transcript=out["transcript"],
        )
        caption = self._captioner.caption(request)
        out["caption"] = caption
        out["caption_embedding"] = self._text.embed([caption])[0].tolist()
        return [{**row, **out, "status": OK, "reason": None}]
