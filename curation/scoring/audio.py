"""Audio scores over ``AnalysisClip.audio`` (16 kHz mono float32 in [-1, 1]): loudness, silence
and speech (silero-vad).

Movie Gen's audio data drops silence-dominated videos and tags voice / music / sound (Movie Gen);
these scores are the measurements such a policy reads. This module only measures.

Scores (``AudioScorer.score``):

===================== ======== ============== ==============================================
name                  unit     range          meaning
===================== ======== ============== ==============================================
audio_has_audio       flag     {0, 1}         1 when the clip has an audio track with samples
audio_loudness_dbfs   dBFS     [-120, 0]      RMS level of the whole clip, 20·log10(RMS); a
                                              full-scale square wave is 0 dBFS, a full-scale
                                              sine -3.01 dBFS; digital silence is floored at
                                              -120
audio_peak_dbfs       dBFS     [-120, 0]      20·log10(max |sample|), same floor
audio_silent_fraction fraction [0, 1]         share of the clip's 50 ms windows (non-
                                              overlapping) whose RMS is below -60 dBFS
                                              (ffmpeg silencedetect's default noise floor)
audio_speech_fraction fraction [0, 1]         share of the clip's duration inside silero-vad
                                              speech segments (silero defaults: speech prob.
                                              >= 0.5, segments >= 250 ms, 30 ms padding)
audio_speech_s        seconds  >= 0           total duration of those segments
audio_has_speech      flag     {0, 1}         1 when audio_speech_s >= 1.0 s
===================== ======== ============== ==============================================

No audio: a clip whose ``audio`` is None (no audio stream) or empty gets ``audio_has_audio = 0``
and every other score NaN — there is nothing to measure, and 0 would read as "measured silent".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from reelflow.curation.scoring.frames import AnalysisClip

AUDIO_SCORE_NAMES = (
    "audio_has_audio", "audio_loudness_dbfs", "audio_peak_dbfs", "audio_silent_fraction",
    "audio_speech_fraction", "audio_speech_s", "audio_has_speech",
)
DBFS_FLOOR = -120.0
VAD_RATE = 16000  # silero-vad runs at 16 kHz (also the analysis decode's rate)


@dataclass(frozen=True)
class AudioConfig:
    window_s: float = 0.05  # silence windows
    silence_dbfs: float = -60.0  # a window below this RMS level is silent (ffmpeg silencedetect's default)
    vad_threshold: float = 0.5  # silero-vad speech probability threshold (its default)
    min_speech_ms: int = 250  # silero-vad: shorter speech segments are dropped (its default)
    min_silence_ms: int = 100  # silero-vad: gaps shorter than this do not end a segment (its default)
    speech_pad_ms: int = 30  # silero-vad: padding each side of a segment (its default)
    min_speech_s: float = 1.0  # audio_has_speech from this much speech


def dbfs(x: float) -> float:
    """20·log10(x) for an amplitude relative to full scale, floored at ``DBFS_FLOOR``."""
    return max(DBFS_FLOOR, 20.0 * math.log10(x)) if x > 0 else DBFS_FLOOR


def loudness_scores(audio: np.ndarray, rate: int, cfg: AudioConfig) -> dict[str, float]:
    a = np.asarray(audio, np.float64)
    rms = math.sqrt(float(np.mean(a * a)))
    win = max(1, int(round(cfg.window_s * rate)))
    n_win = max(1, len(a) // win)  # a clip shorter than one window is one (short) window
    w = a[: n_win * win].reshape(n_win, -1) if len(a) >= win else a.reshape(1, -1)
    w_rms = np.sqrt(np.mean(w * w, axis=1))
    silent = w_rms < 10.0 ** (cfg.silence_dbfs / 20.0)
    return {
        "audio_loudness_dbfs": dbfs(rms),
        "audio_peak_dbfs": dbfs(float(np.max(np.abs(a)))),
        "audio_silent_fraction": float(silent.mean()),
    }


class AudioScorer:
    """Loudness, silence and speech scores. The silero-vad ONNX model (shipped inside the
    silero-vad wheel; never fetched) is loaded on first use, once per process or actor; call
    ``setup()`` to load it eagerly."""

    def __init__(self, cfg: AudioConfig | None = None):
        self.cfg = cfg or AudioConfig()
        self._vad = None

    def setup(self) -> "AudioScorer":
        if self._vad is None:
            import torch

            threads = torch.get_num_threads()
            from silero_vad import load_silero_vad  # its import sets torch's threads to 1 ...

            torch.set_num_threads(threads)  # ... process-wide: undo that for the other scorers
            self._vad = load_silero_vad(onnx=True)  # one-thread onnxruntime session, CPU
        return self

    def speech_probs(self, audio: np.ndarray, rate: int) -> np.ndarray:
        """silero-vad speech probability of each 512-sample (32 ms) window of 16 kHz audio."""
        import torch

        if rate != VAD_RATE:
            raise ValueError(f"silero-vad scoring expects {VAD_RATE} Hz audio (the analysis decode's rate), got {rate}")
        self.setup()
        a = np.ascontiguousarray(audio, dtype=np.float32)
        if len(a) < 512:  # silero rejects input shorter than one window: pad with silence
            a = np.pad(a, (0, 512 - len(a)))
        x = torch.from_numpy(a)
        with torch.no_grad():
            return self._vad.audio_forward(x, rate).numpy().reshape(-1)

    def speech_segments(self, audio: np.ndarray, rate: int) -> list[tuple[float, float]]:
        """Speech segments as (start_s, end_s) relative to the clip start."""
        from silero_vad import get_speech_timestamps_from_probs

        probs = self.speech_probs(audio, rate)
        c = self.cfg
        ts = get_speech_timestamps_from_probs(
            probs.tolist(), sampling_rate=rate, threshold=c.vad_threshold,
            min_speech_duration_ms=c.min_speech_ms, min_silence_duration_ms=c.min_silence_ms,
            speech_pad_ms=c.speech_pad_ms, audio_length_samples=len(audio),
        )
        return [(t["start"] / rate, t["end"] / rate) for t in ts]

    def score(self, clip: AnalysisClip) -> dict[str, float]:
        return self.score_audio(clip.audio, clip.sample_rate)

    def score_audio(self, audio: np.ndarray | None, rate: int | None) -> dict[str, float]:
        """Scores of 16 kHz mono audio (``None`` or empty: a clip without audio)."""
        if audio is None or rate is None or len(audio) == 0:
            return {"audio_has_audio": 0.0, **{k: float("nan") for k in AUDIO_SCORE_NAMES[1:]}}
        out = {"audio_has_audio": 1.0, **loudness_scores(audio, rate, self.cfg)}
        duration = len(audio) / rate
        speech_s = sum(e - s for s, e in self.speech_segments(audio, rate))
        out["audio_speech_s"] = float(speech_s)
        out["audio_speech_fraction"] = float(min(1.0, speech_s / duration))
        out["audio_has_speech"] = float(speech_s >= self.cfg.min_speech_s)
        return {k: out[k] for k in AUDIO_SCORE_NAMES}
