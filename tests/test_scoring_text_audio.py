"""Text (PP-OCR), audio (loudness, silence, silero-vad speech) and aesthetics scorers on real and
generated media, decoded once through ``decode_for_analysis``."""

from __future__ import annotations

import json
import math
import subprocess
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from reelflow.curation.samples import write_frames_h264
from reelflow.curation.scoring.aesthetics import AestheticsConfig, AestheticScorer, ScorerDisabled, aesthetic_head
from reelflow.curation.scoring.audio import AUDIO_SCORE_NAMES, AudioScorer
from reelflow.curation.scoring.frames import decode_for_analysis
from reelflow.curation.scoring.text import TextConfig, TextScorer, sample_indices

FFMPEG = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]


# -- media ---------------------------------------------------------------------------------------
def _write_h264(path: Path, frames: np.ndarray, fps: int) -> Path:
    return write_frames_h264(path, frames, fps, crf=20)


def _burn_in_text(frames: np.ndarray) -> np.ndarray:
    """Large caption-style text drawn into every frame (OpenCV's built-in Hershey fonts: no font
    files needed)."""
    out = frames.copy()
    for f in out:
        cv2.putText(f, "BREAKING NEWS", (30, 150), cv2.FONT_HERSHEY_DUPLEX, 2.0, (255, 255, 255), 5, cv2.LINE_AA)
        cv2.putText(f, "Subscribe now", (120, 300), cv2.FONT_HERSHEY_SIMPLEX, 1.4, (255, 255, 0), 3, cv2.LINE_AA)
    return out


@pytest.fixture(scope="module")
def text_videos(media, tmp_path_factory):
    """Big Buck Bunny's opening at 640x360, 8 fps: once plain, once with burned-in captions."""
    root = tmp_path_factory.mktemp("text")
    src = decode_for_analysis(media["bbb"], 0.0, 4.0, short_side=360, fps=8).frames
    return {
        "plain": _write_h264(root / "plain.mp4", src, 8),
        "text": _write_h264(root / "text.mp4", _burn_in_text(src), 8),
    }


def speech_like(dur_s: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Formant-synthesised babble: voiced syllables (120 Hz-ish glottal pulses through vowel
    formants, syllabic envelope) with fricative bursts and short pauses. silero-vad scores it as
    speech (p > 0.9), while it scores tones and silence ~0."""
    vowels = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410)]
    rng = np.random.default_rng(seed)
    out, n = [], int(dur_s * rate)
    while sum(map(len, out)) < n:
        m = int(rng.uniform(0.15, 0.3) * rate)
        f0 = rng.uniform(100, 140) * (1 + 0.1 * np.sin(np.linspace(0, np.pi, m)))
        pulses = np.diff(np.floor(np.cumsum(f0 / rate)), prepend=0.0)
        f = np.fft.rfftfreq(m, 1 / rate)
        formants = vowels[rng.integers(len(vowels))]
        h = sum(1 / (1 + ((f - fc) / (bw / 2)) ** 2) for fc, bw in zip(formants, (80, 100, 120))) / (1 + f / 300)
        voiced = np.fft.irfft(np.fft.rfft(pulses) * h, m) * np.sin(np.linspace(0, np.pi, m)) ** 0.5
        c = int(0.05 * rate)
        fc = np.fft.rfftfreq(c, 1 / rate)
        burst = np.fft.irfft(np.fft.rfft(rng.normal(0, 1, c)) * np.exp(-(((fc - 4000) / 1500) ** 2)), c) * np.hanning(c)
        out += [0.3 * burst / np.abs(burst).max(), voiced / np.abs(voiced).max()]
        if rng.random() < 0.2:
            out.append(np.zeros(int(rng.uniform(0.05, 0.2) * rate)))
    x = np.concatenate(out)[:n]
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def _video_with_audio(path: Path, audio_args: list[str], dur: float = 4.0) -> Path:
    subprocess.run(
        FFMPEG + ["-f", "lavfi", "-i", f"testsrc2=size=160x90:rate=8:duration={dur}", *audio_args,
                  "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
                  "-c:a", "aac", "-b:a", "96k", "-t", str(dur), str(path)],
        check=True, capture_output=True,
    )
    return path


@pytest.fixture(scope="module")
def audio_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    wav = root / "speech.wav"
    pcm = (speech_like(4.0) * 32767).astype("<i2")
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(pcm.tobytes())
    return {
        "silent": _video_with_audio(root / "silent.mp4", ["-f", "lavfi", "-i", "anullsrc=r=48000:cl=stereo"]),
        "speech": _video_with_audio(root / "speech.mp4", ["-i", str(wav)]),
    }


@pytest.fixture(scope="module")
def ocr():
    return TextScorer().setup()


@pytest.fixture(scope="module")
def vad():
    return AudioScorer().setup()


# -- text ----------------------------------------------------------------------------------------
def test_frame_sampling_one_per_two_seconds_clamped():
    cfg = TextConfig()
    assert sample_indices(32, 4.0, cfg) == [5, 16, 26]  # 4 s: the 3-frame minimum
    assert len(sample_indices(80, 10.0, cfg)) == 5
    assert len(sample_indices(128, 16.0, cfg)) == 8
    assert len(sample_indices(400, 50.0, cfg)) == 8  # capped
    assert sample_indices(2, 4.0, cfg) == [0, 1]  # never more frames than the clip has


def test_burned_in_text_scores_high_and_clean_footage_scores_zero(ocr, text_videos):
    with_text = decode_for_analysis(text_videos["text"])
    plain = decode_for_analysis(text_videos["plain"])
    assert with_text.frames.shape == plain.frames.shape == (32, 256, 456, 3)

    s = ocr.score(with_text)
    assert s["text_frames_sampled"] == 3
    assert s["text_conf_max"] >= 0.7  # Movie Gen's rule (keep if < 0.6) rejects this clip
    assert 0.08 < s["text_area_mean"] <= s["text_area_max"] < 0.5
    assert s["text_boxes_max"] >= 2
    words = " ".join(b.text for b in ocr.ocr_frame(with_text.frames[16])).upper().replace(" ", "")
    assert "BREAKING" in words and "SUBSCRIBE" in words

    p = ocr.score(plain)
    assert p["text_conf_max"] < 0.3 and p["text_area_max"] < 0.005 and p["text_boxes_max"] == 0


def test_real_footage_without_text_is_not_text(ocr, media):
    # the detector proposes a box on a bus-roof hatch in this footage; the recogniser reads a
    # lone symbol there, which is no word: no text area, and far below Movie Gen's 0.6
    s = ocr.score(decode_for_analysis(media["bikes"]))
    assert s["text_frames_sampled"] == 5  # 10 s: one frame per 2 s
    assert s["text_area_max"] == 0.0 and s["text_conf_max"] < 0.4


# -- audio ---------------------------------------------------------------------------------------
def test_sine_tone_loudness_matches_its_known_level(vad, media):
    # ffmpeg's sine source has amplitude 1/8: RMS = 1/(8·√2) → 20·log10 = -21.07 dBFS
    s = vad.score(decode_for_analysis(media["cuts"].path, 0.5, 2.5))
    expected = 20 * math.log10(1 / (8 * math.sqrt(2)))
    assert s["audio_has_audio"] == 1.0
    assert abs(s["audio_loudness_dbfs"] - expected) < 1.0, s
    assert abs(s["audio_peak_dbfs"] - 20 * math.log10(1 / 8)) < 1.0, s
    assert s["audio_silent_fraction"] == 0.0
    assert s["audio_has_speech"] == 0.0 and s["audio_speech_fraction"] < 0.1  # a tone is not speech


def test_vad_tells_speech_from_silence(vad, audio_videos):
    silent = vad.score(decode_for_analysis(audio_videos["silent"]))
    speech = vad.score(decode_for_analysis(audio_videos["speech"]))
    assert silent["audio_has_audio"] == speech["audio_has_audio"] == 1.0
    assert silent["audio_has_speech"] == 0.0 and silent["audio_speech_fraction"] == 0.0
    assert silent["audio_silent_fraction"] > 0.95 and silent["audio_loudness_dbfs"] < -60
    assert speech["audio_has_speech"] == 1.0 and speech["audio_speech_fraction"] > 0.7
    assert speech["audio_speech_s"] > 2.8
    assert speech["audio_silent_fraction"] < 0.3 and -30 < speech["audio_loudness_dbfs"] < -5


def test_clip_without_audio_reports_no_audio_not_zeros(vad, media):
    s = vad.score(decode_for_analysis(media["bikes"], 0.0, 1.0))
    assert set(s) == set(AUDIO_SCORE_NAMES) and s["audio_has_audio"] == 0.0
    assert all(math.isnan(s[k]) for k in AUDIO_SCORE_NAMES[1:])


# -- aesthetics ----------------------------------------------------------------------------------
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_aesthetic_checkpoints(tmp_path_factory):
    """A tiny random open_clip model (custom config registered through open_clip's config
    mechanism) and a random LAION-architecture head, both written to disk."""
    import open_clip
    import torch

    root = tmp_path_factory.mktemp("aesthetic")
    cfg_path = root / "reelflow-tiny-clip.json"
    cfg_path.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("reelflow-tiny-clip")
    torch.save(model.state_dict(), root / "clip.pt")
    head = aesthetic_head(TINY_CLIP["embed_dim"])
    torch.save(head.state_dict(), root / "head.pth")
    return {"config": cfg_path, "clip": root / "clip.pt", "head": root / "head.pth",
            "model": model.eval(), "preprocess": preprocess, "head_module": head.eval()}


def test_aesthetics_loads_tiny_checkpoints_and_scores_the_middle_frame(tiny_aesthetic_checkpoints, media):
    import torch
    from PIL import Image

    ck = tiny_aesthetic_checkpoints
    cfg = AestheticsConfig(clip_model="reelflow-tiny-clip", clip_checkpoint=str(ck["clip"]),
                           head_checkpoint=str(ck["head"]), clip_model_config=str(ck["config"]))
    clip = decode_for_analysis(media["bbb"], 0.0, 2.0, fps=4)
    a = AestheticScorer(cfg).setup()
    assert a.enabled and a.status() == {"enabled": True, "reason": ""}
    s = a.score(clip)
    assert set(s) == {"aesthetic_score"} and math.isfinite(s["aesthetic_score"])
    assert AestheticScorer(cfg).score(clip) == s  # a second load scores identically
    # ... and what was loaded is what was saved: the score is the saved model's on the middle frame
    with torch.no_grad():
        x = ck["preprocess"](Image.fromarray(clip.frames[len(clip.frames) // 2])).unsqueeze(0)
        e = ck["model"].encode_image(x, normalize=True)
        want = float(ck["head_module"](e))
    assert s["aesthetic_score"] == pytest.approx(want, rel=1e-5, abs=1e-6)
    # a different frame gives a different score (the middle one is the one scored)
    assert a.score_frame(clip.frames[0]) != pytest.approx(s["aesthetic_score"], abs=1e-9)


def test_aesthetics_without_weights_is_disabled_never_scores(tiny_aesthetic_checkpoints, media):
    clip = decode_for_analysis(media["bbb"], 0.0, 1.0, fps=2)
    for cfg in (AestheticsConfig(), AestheticsConfig(head_checkpoint=str(tiny_aesthetic_checkpoints["head"]))):
        a = AestheticScorer(cfg)
        assert a.enabled is False and "clip_checkpoint" in a.disabled_reason
        assert a.setup()._head is None  # nothing loaded
        with pytest.raises(ScorerDisabled, match="disabled"):
            a.score(clip)
    # configured but missing weights are a configuration error, not a silent disable
    bad = AestheticsConfig(clip_model="reelflow-tiny-clip", clip_checkpoint="/nonexistent/clip.pt",
                           head_checkpoint=str(tiny_aesthetic_checkpoints["head"]),
                           clip_model_config=str(tiny_aesthetic_checkpoints["config"]))
    with pytest.raises(FileNotFoundError, match="not found"):
        AestheticScorer(bad).setup()
