"""Speech transcripts with OpenAI Whisper, loaded from a configured checkpoint file.

``Transcriber(TranscribeConfig(checkpoint=...))`` loads the checkpoint once with
``whisper.load_model(path)`` (the official ``.pt`` files: a dict with ``dims`` and
``model_state_dict``) and transcribes 16 kHz mono float32 audio in [-1, 1] (``AnalysisClip.audio``)
or a media file (decoded by whisper's ffmpeg reader). Without a configured checkpoint the
transcriber is *disabled* — ``transcribe`` raises ``ModelDisabled``; it never makes up a text.
A model *name* such as ``"small"`` is refused: ``whisper.load_model`` would download it.

Decoding is bounded by construction, so even a badly behaved (or randomly initialised) model
finishes in a predictable time: audio is cut into consecutive 30-s windows (whisper's input
length) and every window is decoded exactly once — greedy (temperature 0, no temperature
fallback), not conditioned on the previous window's text, at most ``sample_len`` tokens — and the
next window always starts where this one ended. (``whisper.transcribe`` instead seeks back to the
last timestamp and retries at higher temperatures, which is better for long-form audio but has no
hard bound on the number of decoder calls.) Windows whisper judges silent (``no_speech_prob`` above
``no_speech_threshold`` *and* mean log-probability below ``logprob_threshold``, as in whisper) are
skipped.

``Transcript``: ``text`` (segments joined), ``language`` (ISO 639-1 code, detected on the first
window unless configured; ``None`` for empty audio), ``language_probability`` (of that code, when
detected), ``segments`` (``{"start", "end", "text"}``, seconds from the start of the audio).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reelflow.curation.captioning.common import ModelDisabled, local_weights

SAMPLE_RATE = 16000  # Hz: whisper's input rate (and the analysis decode's audio rate)


@dataclass(frozen=True)
class TranscribeConfig:
    checkpoint: str | None = None  # whisper .pt checkpoint file (path or s3:// URI); None: disabled
    device: str = "cpu"
    language: str | None = None  # ISO 639-1 code, or None to detect it on the first 30 s
    task: str = "transcribe"  # or "translate" (to English)
    sample_len: int | None = None  # max tokens decoded per 30-s window; None: the model's n_text_ctx // 2
    beam_size: int | None = None  # None: greedy (cheapest); 5 is whisper's CLI default
    no_speech_threshold: float | None = 0.6  # whisper's defaults for skipping a silent window (None: never skip)
    logprob_threshold: float = -1.0
    fp16: bool | None = None  # None: fp16 on CUDA, fp32 on CPU


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str | None
    segments: list[dict] = field(default_factory=list)  # {"start": s, "end": s, "text": str}
    language_probability: float | None = None
    duration_s: float = 0.0  # seconds of audio transcribed

    @property
    def has_text(self) -> bool:
        return bool(self.text.strip())


def make_tiny_whisper_checkpoint(path: str | Path, seed: int = 0, n_text_ctx: int = 64) -> Path:
    """Write a tiny randomly initialised *multilingual* whisper checkpoint to ``path``, in the format
    ``whisper.load_model`` reads (``{"dims": ..., "model_state_dict": ...}``), for tests.

    ``n_vocab = 51865`` is what whisper's multilingual tokenizer needs (99 languages); ``n_mels = 80``
    and ``n_audio_ctx = 1500`` are fixed by 30-s windows of its log-mel front end. Widths and depths
    are tiny (16-wide, one layer), so the file is ~3.5 MB and a window decodes in milliseconds; the
    decoded text is, of course, gibberish."""
    import torch
    from whisper.model import ModelDimensions, Whisper

    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=16, n_audio_head=2, n_audio_layer=1,
                           n_vocab=51865, n_text_ctx=n_text_ctx, n_text_state=16, n_text_head=2, n_text_layer=1)
    torch.manual_seed(seed)
    model = Whisper(dims)
    with torch.no_grad():  # whisper leaves the decoder's positional embedding uninitialised (torch.empty)
        model.decoder.positional_embedding.normal_(0.0, 0.02)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": dims.__dict__, "model_state_dict": model.state_dict()}, path)
    return path


class Transcriber:
    def __init__(self, cfg: TranscribeConfig | str | None = None):
        if isinstance(cfg, (str, Path)):
            cfg = TranscribeConfig(checkpoint=str(cfg))
        self.cfg = cfg or TranscribeConfig()
        self.enabled = bool(self.cfg.checkpoint)
        self.disabled_reason = "" if self.enabled else "transcription disabled: no whisper checkpoint configured"
        self._model = None

    def status(self) -> dict:
        return {"enabled": self.enabled, "reason": self.disabled_reason}

    def setup(self) -> "Transcriber":
        """Load the checkpoint (once). A configured path that is missing raises."""
        if not self.enabled or self._model is not None:
            return self
        import whisper

        path = local_weights(self.cfg.checkpoint, "transcribe")  # a file: never a model name to download
        self._model = whisper.load_model(str(path), device=self.cfg.device).eval()
        return self

    @property
    def model(self):
        return self.setup()._model

    def transcribe(self, audio: np.ndarray | str | Path, sample_rate: int = SAMPLE_RATE) -> Transcript:
        """Transcript of ``audio``: (N,) float32 mono in [-1, 1] at 16 kHz, or a media file path."""
        if not self.enabled:
            raise ModelDisabled(self.disabled_reason)
        import torch
        import whisper
        from whisper.audio import HOP_LENGTH, N_FRAMES, N_SAMPLES
        from whisper.decoding import DecodingOptions
        from whisper.tokenizer import get_tokenizer

        model = self.model
        if isinstance(audio, (str, Path)):
            audio = whisper.load_audio(str(audio), sr=SAMPLE_RATE)
        elif sample_rate != SAMPLE_RATE:
            raise ValueError(f"whisper needs {SAMPLE_RATE} Hz audio, got {sample_rate} Hz")
        audio = np.asarray(audio, np.float32).reshape(-1)
        duration = len(audio) / SAMPLE_RATE
        if len(audio) < HOP_LENGTH:  # not one mel frame: nothing to hear
            return Transcript("", None, [], None, duration)

        cfg = self.cfg
        fp16 = cfg.fp16 if cfg.fp16 is not None else model.device.type == "cuda"
        dtype = torch.float16 if fp16 else torch.float32
        # log-mel of the whole clip, padded by 30 s so the last window is full length
        mel = whisper.log_mel_spectrogram(torch.from_numpy(audio), model.dims.n_mels, padding=N_SAMPLES)
        content_frames = mel.shape[-1] - N_FRAMES
        frame_s = HOP_LENGTH / SAMPLE_RATE  # 10 ms per mel frame

        language, language_prob = cfg.language, None
        if language is None and not model.is_multilingual:
            language = "en"
        segments: list[dict] = []
        for seek in range(0, content_frames, N_FRAMES):
            size = min(N_FRAMES, content_frames - seek)
            window = whisper.pad_or_trim(mel[:, seek:seek + size], N_FRAMES).to(model.device, dtype)
            if language is None:  # detected on the first window, kept for the rest of the clip
                with torch.inference_mode():
                    _, probs = model.detect_language(window)
                language = max(probs, key=probs.get)
                language_prob = float(probs[language])
            options = DecodingOptions(task=cfg.task, language=language, temperature=0.0,
                                      sample_len=cfg.sample_len, beam_size=cfg.beam_size, fp16=fp16)
            with torch.inference_mode():
                result = model.decode(window, options)
            if (cfg.no_speech_threshold is not None and result.no_speech_prob > cfg.no_speech_threshold
                    and result.avg_logprob < cfg.logprob_threshold):
                continue  # whisper's silence rule
            tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages,
                                      language=language, task=cfg.task)
            segments += _segments(result.tokens, tokenizer, seek * frame_s, size * frame_s)
        text = " ".join(s["text"] for s in segments).strip()
        return Transcript(text, language, segments, language_prob, duration)


def _segments(tokens: list[int], tokenizer, offset_s: float, window_s: float) -> list[dict]:
    """Split one window's tokens at timestamp tokens into ``{"start", "end", "text"}`` segments.

    ``<|t0|> text <|t1|>`` is a segment from t0 to t1 (seconds after ``offset_s``); text without a
    closing timestamp runs to the end of the window; times are clamped to the window."""
    tb = tokenizer.timestamp_begin
    precision = 0.02  # s per timestamp token (whisper: 1500 audio positions over 30 s)
    out: list[dict] = []
    start, text_tokens = 0.0, []

    def close(end: float) -> None:
        text = tokenizer.decode(text_tokens).strip()
        if text:
            s = min(max(start, 0.0), window_s)
            e = min(max(end, s), window_s)
            out.append({"start": round(offset_s + s, 3), "end": round(offset_s + e, 3), "text": text})

    for t in tokens:
        if t >= tb:
            ts = (t - tb) * precision
            if text_tokens:
                close(ts)
                text_tokens = []
            start = ts
        elif t < tokenizer.eot:
            text_tokens.append(t)
    if text_tokens:
        close(window_s)
    return out
