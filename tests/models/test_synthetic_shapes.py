import csv
import json

import av
import numpy as np

from reelflow.training.synthetic_shapes import COLOURS, ShapeClip, render_clip, write_synthetic_dataset


def centroid(frame: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(frame.sum(axis=-1))
    return np.array([xs.mean(), ys.mean()])


def test_clip_moves_as_captioned_and_clicks_at_bounces():
    clip = ShapeClip("green", "triangle", "up and to the left", speed=0.9, size=0.2)
    frames, audio, bounces = render_clip(clip, 64, 48, fps=16, seconds=2.0, sample_rate=16000)
    assert frames.shape == (32, 48, 64, 3) and audio.shape == (32000,)
    assert "green triangle moves up and to the left" in clip.caption
    dx, dy = centroid(frames[2]) - centroid(frames[0])
    assert dx < 0 and dy < 0  # up and to the left, before any bounce
    assert (frames[0][frames[0].sum(-1) > 0] == COLOURS["green"]).all()
    assert len(bounces) >= 2
    # sound energy right after each bounce, silence far from every bounce
    for b in bounces:
        s = int(b * 16000)
        assert np.abs(audio[s:s + 400]).max() > 0.1
    quiet = np.ones_like(audio, dtype=bool)
    for b in bounces:
        s = int(b * 16000)
        quiet[max(0, s - 10): s + 2000] = False
    assert np.abs(audio[quiet]).max() < 1e-6


def test_dataset_manifest_and_playable_clips(tmp_path):
    manifest = write_synthetic_dataset(tmp_path, num_clips=2, seed=7, width=64, height=48, fps=8, seconds=1.0,
                                       sample_rate=16000)
    rows = list(csv.DictReader(manifest.open()))
    jsonl = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert rows == jsonl and len(rows) == 2
    for row in rows:
        assert set(row) == {"uri", "license", "title", "description", "source_id"}
        assert row["license"] == "CC0-1.0"
        assert row["description"].startswith("A ") and "bouncing" in row["description"]
        with av.open(row["uri"]) as c:
            assert c.streams.video[0].codec_context.name == "h264"
            assert c.streams.audio[0].codec_context.name == "aac"
            assert sum(1 for _ in c.decode(video=0)) == 8
    assert len({r["source_id"] for r in rows}) == 2
