"""One analysis decode per source (issue #13, item 1): the shots stage decodes each source once,
for its cuts and for the analysis frames the score stage reads; nothing before extraction opens
the source again, and a long source streams to disk instead of filling memory."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from reelflow.curation import shots
from reelflow.curation import source_analysis as sa
from reelflow.curation.policy import Policy, policy_from_dict
from reelflow.curation.probe import probe_file
from reelflow.curation.records import OK
from reelflow.curation.samples import make_cut_video
from reelflow.curation.stages import ClipPlanStage, ScoreStage, ShotsStage, StageContext


# -- the grid -------------------------------------------------------------------------------------
def _picked(times: list[float], fps: float, end: float | None = None) -> list[float]:
    grid = sa.NearestOnGrid(fps)
    out = [t for ft in times for t, _ in grid.feed(ft, ft)]
    return out + [t for t, _ in grid.finish(end)]


def test_the_grid_takes_the_frame_nearest_each_tick():
    frames = [i / 24 for i in range(48)]  # 2 s at 24 fps
    assert _picked(frames, 8.0, end=2.0) == pytest.approx([k / 8 for k in range(16)])
    # 30 fps onto 8 fps: the nearest frame of each tick, never more than half a frame away.
    frames30 = [i / 30 for i in range(60)]
    picked = _picked(frames30, 8.0, end=2.0)
    assert len(picked) == 16
    assert all(abs(t - k / 8) <= 1 / 60 + 1e-9 for k, t in enumerate(picked))


def test_a_source_slower_than_the_grid_is_not_padded_with_repeats():
    frames = [i / 5 for i in range(10)]  # 5 fps
    picked = _picked(frames, 8.0, end=2.0)
    assert picked == sorted(set(picked)) and len(picked) == 10


def test_the_grid_starts_at_the_first_frame():
    frames = [0.5 + i / 24 for i in range(24)]
    assert _picked(frames, 8.0, end=1.5)[:3] == pytest.approx([0.5, 0.625, 0.75])


# -- the shots stage's one decode -----------------------------------------------------------------
def _probed_row(path: Path, item_id: str) -> dict:
    p = probe_file(path)
    return {"run_id": "r", "item_id": item_id, "kind": "video", "parent_id": None, "source_uri": str(path),
            "stage": "filter", "status": OK, "reason": None, "license": "CC0-1.0", **p.__dict__}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("one-decode")
    return make_cut_video(d / "src.mp4", [5.0, 4.5], size=(640, 360), audio=True,
                          sources=["mandelbrot", "cellauto=rule=110:scroll=1"]).path


def test_the_shots_stage_keeps_the_analysis_frames_and_finds_the_same_cuts(source, tmp_path):
    ctx = StageContext(run_id="r", output=str(tmp_path / "out"), policy=Policy())
    (row,) = ShotsStage(ctx).run_row(_probed_row(source, "v1"))
    assert row["status"] == OK, row["reason"]
    assert list(zip(row["shot_starts"], row["shot_ends"])) == shots.detect_adaptive(source, ctx.policy.shots)
    assert row["shot_starts"][1] == pytest.approx(5.0, abs=1 / 24)
    folder = Path(sa.analysis_uri(ctx.output, "v1"))
    index = json.loads((folder / sa.INDEX_FILE).read_text())
    assert (index["width"], index["height"]) == (456, 256) and index["fps"] == 8.0
    assert len(index["times"]) == 76  # 9.5 s at 8 per second
    assert (folder / sa.FRAMES_FILE).stat().st_size == 76 * 456 * 256 * 3
    audio = np.fromfile(folder / sa.AUDIO_FILE, np.float32)
    assert abs(len(audio) - 9.5 * sa.AUDIO_RATE) <= 0.05 * sa.AUDIO_RATE and np.abs(audio).max() > 0.1
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".writing-")]  # published whole


def test_nothing_after_the_shots_stage_opens_the_source_before_extraction(source, tmp_path):
    """Shots, then the clip plan and the score stage with the source gone: every candidate is
    still judged, from the frames the one decode left."""
    ctx = StageContext(run_id="r", output=str(tmp_path / "out"), policy=Policy())
    moved = tmp_path / "src.mp4"
    shutil.copyfile(source, moved)
    (shot_row,) = ShotsStage(ctx).run_row(_probed_row(moved, "v1"))
    candidates = [c for c in ClipPlanStage(ctx).run_row(shot_row) if c["status"] == OK]
    assert len(candidates) == 2
    moved.unlink()
    stage = ScoreStage(ctx)
    stage.setup()
    scored = [stage.run_row(c)[0] for c in candidates]
    assert all(r["status"] != "failed" for r in scored), [r["reason"] for r in scored]
    # The zoom moves slowly and the automaton scrolls fast: the scores come from each one's frames.
    assert scored[0]["motion_mean"] < scored[1]["motion_mean"]
    assert all(r["audio_loudness_dbfs"] > -40 for r in scored)  # the tones, from the kept audio


def test_without_kept_frames_the_score_stage_decodes_the_span(source, tmp_path):
    ctx = StageContext(run_id="r", output=str(tmp_path / "out"),
                       policy=policy_from_dict({"scoring": {"analysis": {"keep_source_frames": False}}}))
    (shot_row,) = ShotsStage(ctx).run_row(_probed_row(source, "v1"))
    assert not Path(sa.analysis_root(ctx.output)).exists()
    cand = next(c for c in ClipPlanStage(ctx).run_row(shot_row) if c["status"] == OK)
    stage = ScoreStage(ctx)
    stage.setup()
    assert stage.run_row(cand)[0]["status"] != "failed"


def test_a_long_source_streams_to_disk_instead_of_into_memory(tmp_path):
    """40 s of 640x360: 320 analysis frames, 112 MB on disk; the decode holds a few frames."""
    src = make_cut_video(tmp_path / "long.mp4", [40.0], size=(640, 360), audio=False, crf=35,
                         sources=["testsrc2"]).path
    writer = sa.AnalysisWriter(tmp_path / "frames", 256, 8.0)
    tracemalloc.start()
    try:
        decoded = sa.decode_source(src, [writer, shots.AdaptiveCuts(Policy().shots)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    writer.close(decoded.end_time, audio=False)
    on_disk = (tmp_path / "frames" / sa.FRAMES_FILE).stat().st_size
    assert on_disk == 320 * 456 * 256 * 3
    assert peak < on_disk / 20, f"decode held {peak / 1e6:.1f} MB for {on_disk / 1e6:.0f} MB of frames"


def test_a_window_is_cut_out_upright(source, tmp_path):
    writer = sa.AnalysisWriter(tmp_path / "f", 256, 8.0)
    decoded = sa.decode_source(source, [writer])
    writer.close(decoded.end_time, audio=False)
    from reelflow.curation.storage import Storage

    frames = sa.SourceFrames.open(Storage(), str(tmp_path / "f"), tmp_path)
    clip = frames.clip(1.0, 3.0)
    assert clip.frames.shape == (16, 256, 456, 3) and clip.audio is None
    turned = frames.clip(1.0, 3.0, rotation=90)
    assert turned.frames.shape == (16, 456, 256, 3)
    assert np.array_equal(turned.frames[0], np.rot90(clip.frames[0]))
    assert sa.SourceFrames.open(Storage(), str(tmp_path / "missing"), tmp_path) is None
    with pytest.raises(ValueError, match="no analysis frames"):
        frames.clip(20.0, 21.0)


def test_audio_the_one_decode_cannot_read_leaves_no_kept_frames_and_the_shots_stand(tmp_path):
    """ffmpeg fails on the source's audio (here: a row that claims audio for a silent file): the
    cuts are still found, no analysis frames are kept, and the score stage decodes each span (and
    records per candidate what it cannot read there)."""
    src = make_cut_video(tmp_path / "silent.mp4", [3.0], size=(320, 180), audio=False).path
    ctx = StageContext(run_id="r", output=str(tmp_path / "out"), policy=Policy())
    (row,) = ShotsStage(ctx).run_row({**_probed_row(src, "v1"), "has_audio": True})
    assert row["status"] == OK and row["shot_starts"] == [0.0]
    assert not Path(sa.analysis_uri(ctx.output, "v1")).exists()
    assert not list(Path(sa.analysis_root(ctx.output)).iterdir())  # nothing half-written left behind
    reason = sa.SourceAudio(src, tmp_path / "a.f32", 48000).wait()
    assert reason and reason.startswith("ffmpeg could not decode the source's audio")


def test_transnetv2_streams_its_windows_and_predicts_as_on_the_whole_stack(media):
    """The streamed windows give TransNetV2's own ``predict_frames`` result, holding < 100 frames."""
    import torch

    detector = shots.TransNetV2Detector()
    for path in (media["cuts"].path, media["bbb"]):
        stream = detector.stream()
        whole: list[np.ndarray] = []
        held = []

        def keep(frame, t, fps):
            whole.append(frame.to_ndarray(width=48, height=27, format="rgb24"))
            held.append(len(stream.buffer))

        sa.decode_source(path, [stream, keep])
        streamed = stream.predictions()
        with torch.no_grad():
            reference, _ = detector.model.predict_frames(torch.from_numpy(np.stack(whole)), quiet=True)
        assert streamed.shape == (len(whole),)
        np.testing.assert_allclose(streamed, reference.numpy(), atol=1e-5)
        assert max(held) < 100
    cuts = media["cuts"].cuts_s
    found = detector.detect(media["cuts"].path)
    assert len(found) == len(cuts) + 1
    assert all(abs(a - c) <= 2 / 24 for (a, _), c in zip(found[1:], cuts))
