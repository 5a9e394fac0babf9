"""`generate` end to end through typer's CliRunner on a tiny random checkpoint."""


import av
import pytest
import typer
from typer.testing import CliRunner

from reelflow.flows.cli_generate import generate_command
from reelflow.training.checkpoint import CheckpointError, load_checkpoint, make_tiny_checkpoint

app = typer.Typer()
app.command("generate")(generate_command)


@app.callback()
def _group() -> None:
    """Keeps `generate` a named subcommand, as in the real CLI."""


runner = CliRunner()


def probe(path):
    """Per stream: codec, pixel format, and duration measured by decoding."""
    info = {}
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        info["video"] = (v.codec_context.name, v.codec_context.pix_fmt, v.average_rate)
        info["audio"] = [(a.codec_context.name, a.sample_rate) for a in c.streams.audio]
        frames = list(c.decode(video=0))
        info["n_frames"] = len(frames)
        info["video_end"] = float(frames[-1].pts * v.time_base) + 1 / float(v.average_rate)
        info["size"] = (frames[0].width, frames[0].height)
    if info["audio"]:
        with av.open(str(path)) as c:
            a = c.streams.audio[0]
            info["audio_duration"] = float(a.duration * a.time_base)
            decoded = list(c.decode(audio=0))
            info["audio_start"] = float(decoded[0].pts * decoded[0].time_base)
            info["audio_samples"] = sum(f.samples for f in decoded)
    return info


def test_generate_writes_mp4_with_synchronized_h264_and_aac(tiny_checkpoint, tmp_path):
    out = tmp_path / "clip.mp4"
    result = runner.invoke(app, ["generate", str(tiny_checkpoint), "--prompt", 'A blue circle moves left, "BOING"',
                                 "--out", str(out), "--seconds", "3", "--seed", "3", "--steps", "3"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    info = probe(out)
    assert info["video"][0] == "h264" and info["video"][1] == "yuv420p"
    assert info["audio"] == [("aac", 16000)]
    assert info["size"] == (64, 64)
    fps = float(info["video"][2])
    assert fps == 8.0
    assert info["n_frames"] == 25  # 3 s at 8 fps = 24 -> 25 (the TAE's 1 + 4k grid)
    video_duration = info["video_end"]
    print(f"\nvideo {video_duration:.3f} s, audio {info['audio_duration']:.3f} s "
          f"({info['audio_samples']} decoded samples incl. AAC padding), audio starts at {info['audio_start']:.3f}")
    assert abs(info["audio_duration"] - video_duration) < 1 / fps
    assert abs(info["audio_start"]) < 1 / fps


def test_generate_is_deterministic_for_a_seed(tiny_checkpoint, tmp_path):
    import numpy as np

    def frames(path):
        with av.open(str(path)) as c:
            return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])

    args = ["--prompt", "a red square", "--seconds", "0.5", "--steps", "2"]
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        out = tmp_path / f"{name}.mp4"
        r = runner.invoke(app, ["generate", str(tiny_checkpoint), *args, "--seed", seed, "--out", str(out)])
        assert r.exit_code == 0, r.output
    a, b, c = frames(tmp_path / "a.mp4"), frames(tmp_path / "b.mp4"), frames(tmp_path / "c.mp4")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_generate_without_audio_model_writes_video_only(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "noaudio.pt", with_audio=False)
    out = tmp_path / "silent.mp4"
    r = runner.invoke(app, ["generate", str(ckpt), "--prompt", "a green triangle", "--out", str(out),
                            "--seconds", "1", "--steps", "2"])
    assert r.exit_code == 0, r.output
    info = probe(out)
    assert info["video"][0] == "h264" and info["audio"] == []


def test_missing_or_invalid_checkpoint_exits_2(tmp_path):
    out = tmp_path / "x.mp4"
    r = runner.invoke(app, ["generate", str(tmp_path / "nope.pt"), "--prompt", "p", "--out", str(out)])
    assert r.exit_code == 2 and "not found" in r.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    r = runner.invoke(app, ["generate", str(bad), "--prompt", "p", "--out", str(out)])
    assert r.exit_code == 2 and "cannot read checkpoint" in r.output
    assert not out.exists()
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)


def test_too_long_for_the_model_exits_2(tiny_checkpoint, tmp_path):
    r = runner.invoke(app, ["generate", str(tiny_checkpoint), "--prompt", "p", "--out", str(tmp_path / "long.mp4"),
                            "--seconds", "60"])
    assert r.exit_code == 2 and "latent frames" in r.output


def test_checkpoint_round_trip(tiny_checkpoint):
    import torch

    a = load_checkpoint(tiny_checkpoint)
    b = load_checkpoint(tiny_checkpoint)
    assert a.config == b.config and a.audio is not None
    for ma, mb in ((a.tae, b.tae), (a.video, b.video), (a.audio, b.audio)):
        for (ka, va), (kb, vb) in zip(ma.state_dict().items(), mb.state_dict().items(), strict=True):
            assert ka == kb and torch.equal(va, vb)
