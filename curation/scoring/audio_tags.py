"""Music / sound classification of a clip's audio with a configured audio-classification model.

Movie Gen tags its audio data as voice / music / sound (Movie Gen); ``audio.py`` measures
loudness, silence and speech (silero-vad). Telling music from other sound needs a trained tagger,
so this scorer runs one *only if one is configured*: a Hugging Face ``transformers``
audio-classification model saved with ``save_pretrained`` (an ``AutoModelForAudioClassification``
plus its ``AutoFeatureExtractor`` in one directory), e.g. the AudioSet AST
``MIT/ast-finetuned-audioset-10-10-0.4593``. The directory comes from ``model_path`` (local, or an
``s3://`` prefix whose files are fetched through ``Storage.localize``); nothing is ever downloaded
from a model hub. With no ``model_path`` the scorer is *disabled*: ``enabled`` is False,
``disabled_reason`` says why and ``score`` raises ``ScorerDisabled`` — it never makes up a score.
A path that is set but missing, or a model none of whose labels is a configured music label, is a
configuration error and raises at ``setup``.

Method: the clip's audio (``AnalysisClip.audio``, 16 kHz mono float32) is resampled to the
feature extractor's ``sampling_rate`` when that differs, cut into windows of ``window_s``
(capped at what an AST-style extractor keeps: it silently truncates longer input; the last window
is aligned to the clip's end so no window is mostly padding) and classified in batches.
Per-label probabilities are the sigmoid of the logits for multi-label models (AudioSet taggers:
labels co-occur, "Music" and "Singing" both fire) and the softmax for single-label ones, chosen by
``activation`` or else ``model.config.problem_type`` (unset → sigmoid, since AudioSet checkpoints
such as MIT's AST leave it unset). A group of labels (music, speech) is aggregated per window as
the **max** of its labels' sigmoid probabilities (independent, overlapping labels: a sum is not a
probability, and AudioSet's parent "Music" already covers its children) or the **sum** of their
softmax probabilities (mutually exclusive classes: the sum is the probability of the group).
Clip scores are the max over windows: "music somewhere in the clip".

Scores (``AudioTagger.score``):

==================== =========== ======= ==================================================
name                 unit        range   meaning
==================== =========== ======= ==================================================
audio_music_prob     probability [0, 1]  max over windows of the music-label group's
                                         probability (max of sigmoids / sum of softmaxes)
audio_speech_prob    probability [0, 1]  the same for the speech labels; NaN when the model
                                         has none of them (the VAD's audio_speech_fraction
                                         is the primary speech measure)
audio_top_label_prob probability [0, 1]  max over windows and labels of a single label's
                                         probability (the model's confidence in its top
                                         label; the label itself: ``top_labels``)
==================== =========== ======= ==================================================

No audio: a clip whose ``audio`` is None or empty gets NaN for every score (as in ``audio.py``),
and ``top_labels`` returns ``[]``.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reelflow.curation.scoring.aesthetics import ScorerDisabled
from reelflow.curation.scoring.frames import AnalysisClip

AUDIO_TAG_SCORE_NAMES = ("audio_music_prob", "audio_speech_prob", "audio_top_label_prob")

# AudioSet ontology names (the AST AudioSet checkpoints' id2label). Matching is case-insensitive;
# names a model does not have are skipped.
AUDIOSET_MUSIC_LABELS = (
    "Music", "Musical instrument", "Singing", "Song", "Background music", "Soundtrack music",
    "Theme music",
)
AUDIOSET_SPEECH_LABELS = (
    "Speech", "Male speech, man speaking", "Female speech, woman speaking",
    "Child speech, kid speaking", "Conversation", "Narration, monologue",
)
KALDI_HOP_S, KALDI_WIN_S = 0.010, 0.025  # AST's fbank frames: 25 ms windows every 10 ms


@dataclass(frozen=True)
class AudioTaggerConfig:
    model_path: str | None = None  # save_pretrained directory (model + feature extractor): path or s3:// prefix
    music_labels: tuple[str, ...] = AUDIOSET_MUSIC_LABELS
    speech_labels: tuple[str, ...] = AUDIOSET_SPEECH_LABELS
    device: str = "cpu"
    window_s: float = 10.0  # AST AudioSet was trained on 10 s clips (capped at the extractor's max_length)
    batch_size: int = 8  # windows per forward pass
    activation: str | None = None  # "sigmoid" | "softmax"; None: from model.config.problem_type


def _local_dir(uri: str) -> Path:
    """A local directory for ``uri``: the directory itself, or the files under an s3:// prefix,
    each fetched through ``Storage.localize`` (ETag-keyed cache) and laid out under one cache
    directory keyed by the fetched versions."""
    from reelflow.curation.storage import Storage, is_s3

    if not is_s3(uri):
        path = Path(uri)
        if not path.is_dir():
            raise FileNotFoundError(f"audio tagger: configured model directory not found: {uri}")
        return path
    st = Storage()
    prefix = uri.rstrip("/") + "/"
    files = st.list(prefix)
    if not files:
        raise FileNotFoundError(f"audio tagger: no files under configured model prefix {uri}")
    local = {f[len(prefix):]: st.localize(f) for f in files}
    key = hashlib.sha1("\n".join(f"{r}={p.name}" for r, p in sorted(local.items())).encode()).hexdigest()[:16]
    dest = Path(tempfile.gettempdir()) / "reelflow-cache" / f"{key}-model"
    if not dest.is_dir():
        tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        for rel, src in local.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / rel)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process laid it out first
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resample(audio: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited polyphase resampling (scipy; torchaudio is not a dependency), numpy linear
    interpolation where scipy is missing."""
    a = np.asarray(audio, np.float32)
    if src_rate == dst_rate:
        return a
    try:
        from scipy.signal import resample_poly
    except ImportError:
        n = int(round(len(a) * dst_rate / src_rate))
        return np.interp(np.arange(n) * (src_rate / dst_rate), np.arange(len(a)), a).astype(np.float32)
    g = math.gcd(int(src_rate), int(dst_rate))
    return resample_poly(a, dst_rate // g, src_rate // g).astype(np.float32)


def _label_index(id2label: dict, names: tuple[str, ...]) -> list[int]:
    wanted = {n.strip().lower() for n in names}
    return sorted(int(i) for i, name in id2label.items() if str(name).strip().lower() in wanted)


class AudioTagger:
    """Music / speech / top-label probabilities from a configured audio-classification model,
    loaded once per process or actor (``setup()``, or lazily on first ``score``)."""

    def __init__(self, cfg: AudioTaggerConfig | None = None):
        self.cfg = cfg or AudioTaggerConfig()
        self.enabled = bool(self.cfg.model_path)
        self.disabled_reason = "" if self.enabled else "audio tagger disabled: no model_path configured"
        self._model = None
        self._fe = None
        self._labels: list[str] = []
        self._music: list[int] = []
        self._speech: list[int] = []
        self._softmax = False
        self._rate = 16000
        self._window = 0  # samples at self._rate

    def status(self) -> dict:
        return {"enabled": self.enabled, "reason": self.disabled_reason}

    def setup(self) -> "AudioTagger":
        if not self.enabled or self._model is not None:
            return self
        import torch
        from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

        cfg = self.cfg
        path = _local_dir(cfg.model_path)
        fe = AutoFeatureExtractor.from_pretrained(path, local_files_only=True)
        model = AutoModelForAudioClassification.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        id2label = {int(i): str(n) for i, n in model.config.id2label.items()}
        labels = [id2label[i] for i in range(len(id2label))]
        music = _label_index(id2label, cfg.music_labels)
        if not music:
            raise ValueError(
                f"audio tagger: model {cfg.model_path} has none of the music labels {list(cfg.music_labels)}; "
                f"its labels are {labels[:50]}{' ...' if len(labels) > 50 else ''}"
            )
        act = cfg.activation or {
            "single_label_classification": "softmax", "multi_label_classification": "sigmoid", None: "sigmoid",
        }.get(model.config.problem_type)
        if act not in ("sigmoid", "softmax"):
            raise ValueError(f"audio tagger: cannot turn {cfg.model_path}'s outputs into probabilities "
                             f"(activation={cfg.activation!r}, problem_type={model.config.problem_type!r})")
        rate = int(getattr(fe, "sampling_rate", 16000))
        window = int(round(cfg.window_s * rate))
        max_frames = getattr(fe, "max_length", None)
        if isinstance(max_frames, int) and hasattr(fe, "num_mel_bins"):
            # AST-style fbank extractors pad/truncate to max_length 10 ms frames: longer windows
            # would silently lose their tail.
            window = min(window, int(round(((max_frames - 1) * KALDI_HOP_S + KALDI_WIN_S) * rate)))
        self._fe, self._model = fe, model.to(cfg.device).eval()
        self._labels, self._music, self._speech = labels, music, _label_index(id2label, cfg.speech_labels)
        self._softmax, self._rate, self._window = act == "softmax", rate, max(window, 1)
        return self

    @property
    def labels(self) -> list[str]:
        """The model's label names, by class index (after ``setup``)."""
        return list(self._labels)

    def _windows(self, a: np.ndarray) -> list[np.ndarray]:
        w = self._window
        min_len = max(400, int(KALDI_WIN_S * self._rate))  # one analysis frame (and wav2vec2's receptive field)
        if len(a) < min_len:
            a = np.pad(a, (0, min_len - len(a)))
        if len(a) <= w:
            return [a]
        starts = list(range(0, len(a) - w, w)) + [len(a) - w]  # last window ends at the clip's end
        return [a[s : s + w] for s in starts]

    def window_probs(self, audio: np.ndarray, rate: int) -> np.ndarray:
        """(windows, labels) probabilities of mono float audio at ``rate`` Hz."""
        import torch

        if not self.enabled:
            raise ScorerDisabled(self.disabled_reason)
        self.setup()
        wins = self._windows(resample(audio, rate, self._rate))
        out = []
        for i in range(0, len(wins), self.cfg.batch_size):
            batch = wins[i : i + self.cfg.batch_size]  # equal lengths: no padding needed
            x = self._fe(batch, sampling_rate=self._rate, return_tensors="pt")
            x = {k: v.to(self.cfg.device) for k, v in x.items()}
            with torch.inference_mode():
                logits = self._model(**x).logits.float()
            p = logits.softmax(-1) if self._softmax else logits.sigmoid()
            out.append(p.cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    def _group(self, probs: np.ndarray, idx: list[int]) -> float:
        if not idx:
            return float("nan")
        g = probs[:, idx]
        per_window = np.minimum(g.sum(1), 1.0) if self._softmax else g.max(1)  # clip rounding past 1
        return float(per_window.max())

    def scores_from_probs(self, probs: np.ndarray) -> dict[str, float]:
        """Clip scores from ``window_probs`` output (to score and rank labels with one forward)."""
        return {
            "audio_music_prob": self._group(probs, self._music),
            "audio_speech_prob": self._group(probs, self._speech),
            "audio_top_label_prob": float(probs.max()),
        }

    def top_from_probs(self, probs: np.ndarray, k: int = 5) -> list[tuple[str, float]]:
        best = probs.max(0)  # each label's max over windows
        order = np.argsort(-best, kind="stable")[:k]
        return [(self._labels[i], float(best[i])) for i in order]

    def score(self, clip: AnalysisClip) -> dict[str, float]:
        if not self.enabled:
            raise ScorerDisabled(self.disabled_reason)
        if clip.audio is None or clip.sample_rate is None or len(clip.audio) == 0:
            return {k: float("nan") for k in AUDIO_TAG_SCORE_NAMES}
        return self.scores_from_probs(self.window_probs(clip.audio, clip.sample_rate))

    def top_labels(self, clip: AnalysisClip, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most probable labels as (name, max-over-windows probability), best first."""
        if not self.enabled:
            raise ScorerDisabled(self.disabled_reason)
        if clip.audio is None or clip.sample_rate is None or len(clip.audio) == 0:
            return []
        return self.top_from_probs(self.window_probs(clip.audio, clip.sample_rate), k)
