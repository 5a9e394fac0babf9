"""Record contracts: the columns of every persisted stage table, statuses, and stable ids.

A stage table row is the row it came from plus the fields the stage adds, so each table under
``OUTPUT/_stages/<stage>/`` can be read on its own. Schemas are explicit so that part files
written by different workers (or different runs, on resume) always concatenate.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

# Stage-level statuses. ``ok`` means "passed this stage, goes on"; the ledger turns the last
# status of every item into its terminal status (accepted | rejected | failed).
OK, REJECTED, FAILED = "ok", "rejected", "failed"
ACCEPTED = "accepted"
STATUSES = (OK, REJECTED, FAILED)
TERMINAL_STATUSES = (ACCEPTED, REJECTED, FAILED)

VIDEO, CLIP = "video", "clip"

COMMON = [
    pa.field("run_id", pa.string()),
    pa.field("item_id", pa.string()),
    pa.field("kind", pa.string()),
    pa.field("parent_id", pa.string()),
    pa.field("source_uri", pa.string()),
    pa.field("stage", pa.string()),
    pa.field("status", pa.string()),
    pa.field("reason", pa.string()),
    # For failed rows: True when the error was of the moment (throttling, a reset connection, a
    # worker killed for memory) and a resume retries the item; False for the item's own fault.
    pa.field("retryable", pa.bool_()),
]
SOURCE = [
    pa.field("license", pa.string()),
    pa.field("title", pa.string()),
    pa.field("description", pa.string()),
    pa.field("source_id", pa.string()),
]
PROBE = [
    pa.field("size_bytes", pa.int64()),
    pa.field("container", pa.string()),
    pa.field("video_codec", pa.string()),
    pa.field("audio_codec", pa.string()),
    pa.field("src_width", pa.int32()),
    pa.field("src_height", pa.int32()),
    pa.field("rotation", pa.int32()),
    pa.field("src_fps", pa.float64()),
    pa.field("src_duration_s", pa.float64()),
    pa.field("has_audio", pa.bool_()),
]
SHOTS = [
    pa.field("shot_detector", pa.string()),
    pa.field("shot_starts", pa.list_(pa.float64())),
    pa.field("shot_ends", pa.list_(pa.float64())),
]
CLIP_PLAN = [
    pa.field("shot_index", pa.int32()),
    pa.field("clip_index", pa.int32()),
    pa.field("start_s", pa.float64()),
    pa.field("end_s", pa.float64()),
    pa.field("duration_s", pa.float64()),
]
EXTRACT = [
    pa.field("clip_uri", pa.string()),
    pa.field("audio_uri", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("fps", pa.float64()),
    pa.field("frames", pa.int32()),
    pa.field("clip_bytes", pa.int64()),
]
# Quality scores of the score stage (curation/scoring/*): NaN where a scorer is disabled or does
# not apply (audio scores on a clip without audio). Units and ranges: each scorer's docstring.
SCORE_COLUMNS = [
    "motion_mean", "motion_max", "static_fraction", "static_longest_s", "static",
    "cut_count", "cuts_per_s",
    "border_top", "border_bottom", "border_left", "border_right", "border_fraction",
    "sharpness", "mean_luma", "dark_clipped", "bright_clipped",
    "text_conf_max", "text_area_max", "text_area_mean", "text_frames_sampled",
    "audio_has_audio", "audio_loudness_dbfs", "audio_silent_fraction", "audio_speech_fraction", "audio_has_speech",
    "aesthetic_score", "audio_music_prob", "audio_speech_prob", "audio_top_label_prob",
]
SCORE = [pa.field(c, pa.float64()) for c in SCORE_COLUMNS] + [
    # The audio tagger's top labels, "Music=0.83; Speech=0.12; ..." (when a model is configured).
    pa.field("audio_tags", pa.string()),
    # Every rule the clip broke, in policy order, "rule: score=value>limit; ..."; the first is the
    # ledger reason. Score-only rules are listed too but do not reject.
    pa.field("rule_failures", pa.string()),
]

# Signatures the score stage computes from the same analysis decode (of the source's clip span),
# for dedup, captions and balancing: no later stage decodes the clip again.
SIGNATURE = [
    pa.field("content_signature", pa.string()),  # hash of the decoded content (exact dedup)
    pa.field("phashes", pa.list_(pa.uint64())),  # 64-bit pHash of evenly spaced frames (near dedup)
    pa.field("camera_motion", pa.string()),  # static | pan_left | ... | shaky | none (from global flow)
    pa.field("camera_confidence", pa.float64()),
    pa.field("clip_embedding", pa.list_(pa.float32())),  # L2-normalised open_clip image embedding, or null
]
DEDUP = [
    pa.field("duplicate_of", pa.string()),  # the kept clip of this clip's duplicate group
    pa.field("dedup_level", pa.string()),  # exact | near | semantic
    pa.field("dedup_similarity", pa.float64()),  # frame agreement (near) or cosine (semantic)
]
CAPTION = [
    pa.field("transcript", pa.string()),
    pa.field("transcript_language", pa.string()),
    pa.field("transcript_segments", pa.string()),  # JSON [{"start", "end", "text"}, ...] in clip seconds
    pa.field("tags", pa.string()),  # zero-shot CLIP tags "tag=prob; ..."
    pa.field("caption", pa.string()),
    pa.field("caption_embedding", pa.list_(pa.float32())),  # L2-normalised MiniLM embedding (384-d)
]
BALANCE = [
    pa.field("cluster_id", pa.int32()),
    pa.field("cluster_size", pa.int32()),
    pa.field("sampling_weight", pa.float64()),  # proportional to 1/sqrt(cluster_size), mean 1
]

# The score stage's CPU operator hands its model operator a pickled payload (the few frames and
# the audio the models read) in this column; it never reaches a persisted table.
ANALYSIS_COLUMN = "_analysis"

SHARD = [
    pa.field("aspect_bucket", pa.string()),
    pa.field("duration_bucket", pa.string()),
    pa.field("bucket", pa.string()),
    pa.field("shard", pa.string()),
]

_VIDEO_PROBED = COMMON + SOURCE + PROBE
_CLIP_BASE = COMMON + SOURCE + PROBE + CLIP_PLAN

_SCORED = _CLIP_BASE + SCORE + SIGNATURE
_ENCODED = _SCORED + DEDUP + EXTRACT

# Every stage table, in pipeline order: the one list the ledger, the item rules, the gates and the
# report derive their stage lists from. Judge before encode (ARCHITECTURE decision 4): candidates
# are scored from the source and deduplicated first; only the survivors are extracted.
STAGE_ORDER = ("ingest", "probe", "filter", "shots", "clips", "score", "dedup", "extract", "caption", "balance",
               "shard")
VIDEO_STAGES = STAGE_ORDER[: STAGE_ORDER.index("clips")]  # one row per input video
CLIP_STAGES = STAGE_ORDER[STAGE_ORDER.index("clips"):]  # one row per candidate clip
SCORED_STAGES = STAGE_ORDER[STAGE_ORDER.index("score"):]  # rows carry the quality scores
ENCODED_STAGES = STAGE_ORDER[STAGE_ORDER.index("extract"):]  # ok rows have an encoded clip file

STAGE_SCHEMAS: dict[str, pa.Schema] = {
    "ingest": pa.schema(COMMON + SOURCE),
    "probe": pa.schema(_VIDEO_PROBED),
    "filter": pa.schema(_VIDEO_PROBED),
    "shots": pa.schema(_VIDEO_PROBED + SHOTS),
    "clips": pa.schema(_CLIP_BASE),
    "score": pa.schema(_SCORED),
    "dedup": pa.schema(_SCORED + DEDUP),
    "extract": pa.schema(_ENCODED),
    "caption": pa.schema(_ENCODED + CAPTION),
    "balance": pa.schema(_ENCODED + CAPTION + BALANCE),
    "shard": pa.schema(_ENCODED + CAPTION + BALANCE + SHARD),
}
assert tuple(STAGE_SCHEMAS) == STAGE_ORDER

# Column order of index.parquet: the clip record of the data contract (one row per accepted clip).
INDEX_COLUMNS = [
    "key", "source_id", "source_uri", "license", "title", "description", "start_s", "end_s", "duration_s",
    "width", "height", "fps", "frames", "has_audio", "aspect_bucket", "duration_bucket", "bucket",
    "caption", "camera_motion", "tags", "transcript", "transcript_language", "shard", "cluster_id",
    "cluster_size", "sampling_weight", "run_id", *SCORE_COLUMNS, "clip_embedding", "caption_embedding",
]

# Rows between the score stage's two operators: the score table plus the payload.
SCORE_ANALYSIS_SCHEMA = STAGE_SCHEMAS["score"].append(pa.field(ANALYSIS_COLUMN, pa.binary()))

_ALL_FIELDS = {f.name: f for f in STAGE_SCHEMAS["shard"]}
_ALL_FIELDS["key"] = pa.field("key", pa.string())
INDEX_SCHEMA = pa.schema([_ALL_FIELDS[c] for c in INDEX_COLUMNS])

LEDGER_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("item_id", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("parent_id", pa.string()),
        pa.field("source_uri", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("status", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("duplicate_of", pa.string()),  # dedup: the clip kept in this clip's place
        pa.field("retryable", pa.bool_()),  # failed rows: a resume retries it (transient error)
    ]
)


def video_id(source_uri: str) -> str:
    """Stable id of an input: the same URI always maps to the same id (resume relies on it)."""
    return "v" + hashlib.sha1(source_uri.encode()).hexdigest()[:16]


def clip_key(video: str, shot_index: int, clip_index: int) -> str:
    # WebDataset splits sample keys at the first dot and treats '/' as a path: keep both out.
    return f"{video}_s{shot_index:04d}_c{clip_index:02d}"


def conform(row: dict, schema: pa.Schema) -> dict:
    """Keep exactly the schema's columns (missing ones as None) so part files always concatenate."""
    return {name: row.get(name) for name in schema.names}


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([conform(r, schema) for r in rows], schema=schema)
