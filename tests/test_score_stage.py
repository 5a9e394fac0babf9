"""The score stage on real and generated clips: one decode, every scorer, Movie Gen's rules.

Each case is a clip whose answer is known; the stage must reject it by the named rule (or keep
it), with the rule and the value in the reason."""

from __future__ import annotations

import subprocess
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from reelflow.curation.policy import Policy
from reelflow.curation.samples import make_cut_video
from reelflow.curation.stages import ScoreStage, StageContext


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def with_text(src: Path, dst: Path, seconds: float = 3.0) -> Path:
    """Burn large captions into real footage (OpenCV's built-in font: no font files needed)."""
    with av.open(str(src)) as cin, av.open(str(dst), "w") as cout:
        vs = cout.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 640, 272, "yuv420p"
        for i, frame in enumerate(cin.decode(video=0)):
            if i >= seconds * 25:
                break
            img = np.ascontiguousarray(frame.to_ndarray(format="rgb24", width=640, height=272))
            cv2.putText(img, "BREAKING NEWS", (40, 150), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (255, 255, 255), 6)
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                cout.mux(p)
        for p in vs.encode():
            cout.mux(p)
    return dst


@pytest.fixture(scope="module")
def clips(media, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("score-clips")
    bikes = media["bikes"]
    out = {"clean": d / "clean.mp4", "still": d / "still.mp4", "letterbox": d / "letterbox.mp4"}
    ffmpeg("-ss", "3.2", "-t", "2.2", "-i", str(bikes), "-an", str(out["clean"]))
    ffmpeg("-ss", "1", "-i", str(media["bbb"]), "-frames:v", "1", str(d / "frame.png"))
    ffmpeg("-loop", "1", "-i", str(d / "frame.png"), "-t", "3", "-r", "24", "-pix_fmt", "yuv420p", str(out["still"]))
    ffmpeg("-ss", "3.2", "-t", "2.2", "-i", str(bikes), "-vf", "scale=640:200,pad=640:272:0:36:black", "-an",
           str(out["letterbox"]))
    out["text"] = with_text(bikes, d / "text.mp4")
    out["no_text"] = d / "no_text.mp4"
    ffmpeg("-t", "3", "-i", str(bikes), "-vf", "scale=640:272", "-an", str(out["no_text"]))
    out["cuts"] = make_cut_video(d / "cuts.mp4", [0.5] * 8, size=(320, 180), audio=False).path
    return out


@pytest.fixture(scope="module")
def stage(tmp_path_factory) -> ScoreStage:
    s = ScoreStage(StageContext(run_id="r", output=str(tmp_path_factory.mktemp("out")), policy=Policy()))
    s.setup()
    return s


def run(stage: ScoreStage, path: Path) -> dict:
    (row,) = stage.run_row({"item_id": path.stem, "clip_uri": str(path), "audio_uri": None, "status": "ok"})
    return row


def test_clean_real_footage_is_kept_with_every_visual_score(stage, clips):
    row = run(stage, clips["clean"])
    assert row["status"] == "ok", row["reason"]
    for c in ("motion_mean", "cuts_per_s", "border_fraction", "sharpness", "mean_luma", "text_conf_max"):
        assert np.isfinite(row[c]), c
    assert row["audio_has_audio"] == 0.0 and "aesthetic_score" not in row  # no audio; no weights configured


def test_a_still_image_held_for_seconds_is_rejected_as_static(stage, clips):
    row = run(stage, clips["still"])
    assert row["status"] == "rejected" and row["reason"].startswith("static: static=1>=0.5"), row["reason"]


def test_burned_in_text_is_rejected_and_the_same_footage_without_text_is_kept(stage, clips):
    row = run(stage, clips["text"])
    assert row["status"] == "rejected" and row["reason"].startswith("text: text_conf_max="), row["reason"]
    assert run(stage, clips["no_text"])["status"] == "ok"


def test_letterboxed_footage_is_caught_by_the_border_rule(stage, clips):
    row = run(stage, clips["letterbox"])
    assert row["status"] == "rejected" and row["reason"].startswith("borders: border_fraction="), row["reason"]


def test_a_cut_heavy_clip_breaks_the_jitter_rule(stage, clips):
    row = run(stage, clips["cuts"])
    assert row["status"] == "rejected"
    assert "jitter: cuts_per_s=" in row["rule_failures"] and row["cuts_per_s"] >= 0.85


def test_the_cpu_operator_ships_only_model_inputs_and_the_model_operator_finishes_the_row(stage, clips):
    """The two Ray operators, called in sequence as the pipeline does: analyze (decode + CPU
    scores, a small payload) then process (models + rules); same result as the one-call path."""
    from reelflow.curation.records import ANALYSIS_COLUMN

    base = {"item_id": "t", "clip_uri": str(clips["text"]), "audio_uri": None, "status": "ok"}
    mid = stage.run_analyze(base)
    assert mid["status"] == "ok" and np.isfinite(mid["motion_mean"]) and "text_conf_max" not in mid
    assert 0 < len(mid[ANALYSIS_COLUMN]) < 4 << 20  # a few frames, not the decoded clip
    (row,) = stage.run_row(mid)
    assert ANALYSIS_COLUMN not in row and row["reason"] == run(stage, clips["text"])["reason"]
    broken = stage.run_analyze({**base, "clip_uri": str(clips["text"].with_suffix(".missing"))})
    assert broken["status"] == "failed" and broken["reason"].startswith("score: ")
    assert stage.run_row(broken)[0]["reason"] == broken["reason"]  # passed on, not re-analysed


def test_lazy_scoring_skips_flow_and_ocr_on_clips_a_cheap_rule_rejected(tmp_path, clips):
    lazy = ScoreStage(StageContext(run_id="r", output=str(tmp_path),
                                   policy=Policy(scoring={"skip_models_after_reject": True})))
    eager = ScoreStage(StageContext(run_id="r", output=str(tmp_path),
                                    policy=Policy(scoring={"skip_models_after_reject": False})))
    row = run(lazy, clips["letterbox"])
    assert row["reason"].startswith("borders: ") and "text_conf_max" not in row
    # no flow either: no motion score, no camera label (the borders already decided)
    assert "motion_mean" not in row and row["camera_motion"] is None and np.isfinite(row["border_fraction"])
    full = run(eager, clips["letterbox"])
    assert full["status"] == row["status"] == "rejected" and np.isfinite(full["motion_mean"])
    assert full["camera_motion"] is not None and np.isfinite(full["text_conf_max"])
    # a still is static from its frame differences alone: rejected by that rule, no flow paid
    still = run(lazy, clips["still"])
    assert still["reason"].startswith("static: static=1>=0.5") and "motion_mean" not in still
    kept = run(lazy, clips["no_text"])  # kept by the cheap rules: flow and OCR as ever
    assert kept["status"] == "ok" and np.isfinite(kept["text_conf_max"]) and np.isfinite(kept["motion_mean"])
    assert kept["text_frames_sampled"] == 3


def test_lazy_ocr_stops_at_the_first_frame_whose_text_breaks_the_rule(tmp_path, clips):
    lazy = ScoreStage(StageContext(run_id="r", output=str(tmp_path),
                                   policy=Policy(scoring={"skip_models_after_reject": True})))
    eager = ScoreStage(StageContext(run_id="r", output=str(tmp_path),
                                    policy=Policy(scoring={"skip_models_after_reject": False})))
    quick, full = run(lazy, clips["text"]), run(eager, clips["text"])
    assert quick["status"] == full["status"] == "rejected"
    assert quick["reason"].startswith("text: text_conf_max=") and full["reason"].startswith("text: text_conf_max=")
    # the caption is on every frame: the first OCR'd frame already breaks the rule
    assert quick["text_frames_sampled"] == 1 < full["text_frames_sampled"] == 3
    assert quick["text_conf_max"] >= 0.6 and quick["text_conf_max"] <= full["text_conf_max"]
    # a score-only text rule never stops OCR early (it judges nothing)
    scored = ScoreStage(StageContext(run_id="r", output=str(tmp_path), policy=Policy(
        scoring={"skip_models_after_reject": True, "text": {"max": 0.6, "score_only": True}})))
    assert run(scored, clips["text"])["text_frames_sampled"] == 3
