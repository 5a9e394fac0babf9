"""Pluggable captioners: a caption per clip in Movie Gen's shape (``FPS-<n>``, camera prefix, text).

A captioner implements the ``Captioner`` protocol — ``caption(request: CaptionRequest) -> str`` —
and may have a ``setup()`` that loads its model once (a Ray actor calls it when it starts).
``load_captioner(kind, path, device)`` picks one:

``"template"`` — ``TemplateCaptioner``
    No model. The description is assembled from what is known about the clip: source title and
    description, CLIP zero-shot tags (when CLIP weights exist), and the speech transcript
    (``assemble.template_description``). Short, literal, never invented.
``"vlm"`` — ``VLMCaptioner``
    A vision-language (image-text-to-text) model from a local Hugging Face folder, loaded with
    ``transformers`` (``AutoModelForImageTextToText`` + ``AutoProcessor``, ``local_files_only``).
    Its generated description replaces the template description; the FPS token, the camera prefix
    and (by default) the ``Speech: "..."`` sentence are kept, since the model neither knows the
    frame rate reliably nor hears the audio. Two model families are handled:

    * chat VLMs whose processor has a chat template (LLaVA / LLaVA-OneVision, Qwen2-VL /
      Qwen2.5-VL, SmolVLM, Idefics3, Gemma 3 ...): ``n_frames`` evenly spaced
      frames are sent as images in one user turn followed by ``prompt``; the reply is the
      description.
    * plain image captioners without a chat template (BLIP, GIT, ``VisionEncoderDecoder``):
      the middle frame is captioned.

    Generation is greedy and bounded by ``max_new_tokens``. Without a path it is *disabled*
    (``enabled`` False, ``caption`` raises ``ModelDisabled``).
``"package.module:ClassName"``
    Any class built as ``ClassName(path=path, device=device)`` with a ``caption(request)``
    method — e.g. a video-native model (Qwen2.5-VL with ``videos=``, a LLaMa3-Video-style
    captioner as in Movie Gen) or a remote captioning service.

Plugging a real VLM in on a GPU cluster: fetch the model folder once, ahead of the run, on a
machine with internet (``hf download <repo> --local-dir /models/<name>``) and put it on storage the
workers read; then run the caption stage with ``kind="vlm", path="/models/<name>", device="cuda"``.
``dtype="auto"`` is bfloat16 on CUDA; ``device="auto"`` shards a model too large for one GPU with
``device_map="auto"`` (needs the ``accelerate`` package, not installed here). Give the stage one GPU
per actor so each actor loads the model once. Folders that ship custom code also need
``trust_remote_code=True`` in ``VLMConfig``. Nothing is downloaded at run time.

Units: ``CaptionRequest.fps`` is the clip's frame rate in Hz (the FPS token); ``duration_s`` in
seconds; frames are (T, H, W, 3) uint8 RGB (the analysis decode's frames serve).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from reelflow.curation.captioning.assemble import (
    CaptionConfig,
    assemble_caption,
    clean_text,
    speech_sentence,
    template_description,
    truncate_words,
)
from reelflow.curation.captioning.clip_model import frame_indices
from reelflow.curation.captioning.common import ModelDisabled, local_weights

DEFAULT_VLM_PROMPT = (
    "Describe this video in detail in one paragraph: the setting, the main subjects and what they "
    "do, colours and lighting, and the camera's viewpoint. Do not mention these instructions."
)


@dataclass(frozen=True, eq=False)
class CaptionRequest:
    fps: float  # the clip's frame rate, Hz (the FPS token)
    duration_s: float = 0.0  # seconds
    frames: np.ndarray | None = None  # (T, H, W, 3) uint8 RGB, evenly sampled over the clip
    camera_label: str | None = None  # camera_motion.CameraMotion.label ("none" or None: no prefix)
    camera_confidence: float = 0.0  # [0, 1]
    title: str | None = None  # source title (manifest)
    description: str | None = None  # source description (manifest)
    tags: list[tuple[str, float]] = field(default_factory=list)  # zero-shot (tag, probability), best first
    transcript: str | None = None  # speech transcript (transcribe.Transcript.text)


@runtime_checkable
class Captioner(Protocol):
    name: str

    def caption(self, request: CaptionRequest) -> str:
        """The full caption: ``FPS-<n>`` token, camera prefix for confident labels, description."""
        ...


class TemplateCaptioner:
    """Caption assembled from the clip's known facts (no model)."""

    name = "template"

    def __init__(self, cfg: CaptionConfig | None = None):
        self.cfg = cfg or CaptionConfig()
        self.enabled, self.disabled_reason = True, ""

    def setup(self) -> "TemplateCaptioner":
        return self

    def status(self) -> dict:
        return {"enabled": True, "reason": ""}

    def describe(self, request: CaptionRequest) -> str:
        return template_description(request.title, request.description, request.tags, request.transcript,
                                    self.cfg)

    def caption(self, request: CaptionRequest) -> str:
        return assemble_caption(request.fps, self.describe(request), request.camera_label,
                                request.camera_confidence, self.cfg)


@dataclass(frozen=True)
class VLMConfig:
    path: str | None = None  # local Hugging Face model folder; None: disabled
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", or "auto" (accelerate device_map="auto")
    dtype: str = "auto"  # "auto" (bfloat16 on CUDA, float32 on CPU), "float32", "bfloat16", "float16"
    prompt: str = DEFAULT_VLM_PROMPT  # user turn for chat VLMs (plain captioners take no prompt)
    n_frames: int = 4  # evenly spaced frames sent to a chat VLM (plain captioners: the middle one)
    max_new_tokens: int = 160  # generation bound (~100 words of description)
    num_beams: int = 1  # greedy by default
    repetition_penalty: float = 1.0  # >1 discourages loops in small models
    include_transcript: bool = True  # append 'Speech: "..."' after the model's description
    trust_remote_code: bool = False  # only for model folders that ship their own code


def _torch_dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") or device == "auto" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


class VLMCaptioner:
    """Caption whose description is generated by a local vision-language model."""

    name = "vlm"

    def __init__(self, cfg: VLMConfig | str | None = None, caption_cfg: CaptionConfig | None = None):
        if isinstance(cfg, (str, Path)):
            cfg = VLMConfig(path=str(cfg))
        self.cfg = cfg or VLMConfig()
        self.caption_cfg = caption_cfg or CaptionConfig()
        self.enabled = bool(self.cfg.path)
        self.disabled_reason = "" if self.enabled else "vlm captioner disabled: no model path configured"
        self._model = None
        self._processor = None  # a ProcessorMixin with a chat template, or None
        self._image_processor = None
        self._tokenizer = None

    def status(self) -> dict:
        return {"enabled": self.enabled, "reason": self.disabled_reason}

    def setup(self) -> "VLMCaptioner":
        """Load model and processor once from the local folder (never from a hub)."""
        if not self.enabled or self._model is not None:
            return self
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
        from transformers.processing_utils import ProcessorMixin
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = local_weights(self.cfg.path, "vlm", allow_dir=True)
        if not path.is_dir():
            raise FileNotFoundError(f"vlm: {self.cfg.path} is not a model folder")
        c = self.cfg
        kw = {"local_files_only": True, "trust_remote_code": c.trust_remote_code}
        load = {"dtype": _torch_dtype(c.dtype, c.device)}
        if c.device == "auto":
            load["device_map"] = "auto"
        model = AutoModelForImageTextToText.from_pretrained(str(path), **kw, **load)
        if c.device != "auto":
            model = model.to(c.device)
        self._model = model.eval()
        proc = AutoProcessor.from_pretrained(str(path), **kw)
        if isinstance(proc, ProcessorMixin):
            if getattr(proc, "chat_template", None):
                self._processor = proc  # chat VLM: frames + prompt through the chat template
            else:
                self._image_processor = proc  # BLIP / GIT: processor(images=...) gives pixel_values
            self._tokenizer = proc.tokenizer
        elif hasattr(proc, "decode"):  # only a tokenizer (VisionEncoderDecoder folders)
            self._tokenizer = proc
            self._image_processor = AutoImageProcessor.from_pretrained(str(path), **kw)
        else:  # only an image processor
            self._image_processor = proc
            self._tokenizer = AutoTokenizer.from_pretrained(str(path), **kw)
        return self

    def _generate(self, inputs) -> str:
        import torch

        device = self._model.device
        inputs = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in inputs.items()}
        dtype = self._model.dtype
        if "pixel_values" in inputs and torch.is_floating_point(inputs["pixel_values"]):
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.inference_mode():
            out = self._model.generate(**inputs, max_new_tokens=self.cfg.max_new_tokens, do_sample=False,
                                       num_beams=self.cfg.num_beams,
                                       repetition_penalty=self.cfg.repetition_penalty)
        if not self._model.config.is_encoder_decoder and "input_ids" in inputs:
            out = out[:, inputs["input_ids"].shape[1]:]  # a decoder-only model echoes the prompt
        return self._tokenizer.batch_decode(out, skip_special_tokens=True)[0].strip()

    def describe(self, frames: np.ndarray) -> str:
        """The model's description of (T, H, W, 3) uint8 RGB ``frames`` (cleaned, uncut)."""
        if not self.enabled:
            raise ModelDisabled(self.disabled_reason)
        from PIL import Image

        self.setup()
        if frames is None or len(frames) == 0:
            raise ValueError("vlm captioner: the request has no frames")
        if self._processor is not None:
            images = [Image.fromarray(np.ascontiguousarray(frames[i]))
                      for i in frame_indices(len(frames), self.cfg.n_frames)]
            content = [{"type": "image", "image": im} for im in images]
            content.append({"type": "text", "text": self.cfg.prompt})
            inputs = self._processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True,
                return_dict=True, return_tensors="pt")
        else:
            middle = Image.fromarray(np.ascontiguousarray(frames[len(frames) // 2]))
            inputs = dict(self._image_processor(images=[middle], return_tensors="pt"))
        return clean_text(self._generate(inputs))

    def caption(self, request: CaptionRequest) -> str:
        cfg = self.caption_cfg
        speech = speech_sentence(request.transcript, cfg.max_transcript_words) if self.cfg.include_transcript else ""
        # the model's words get what the speech leaves of the description budget
        budget = max(cfg.max_words - len(speech.split()), 0)
        text = " ".join(p for p in (truncate_words(self.describe(request.frames), budget), speech) if p)
        return assemble_caption(request.fps, text, request.camera_label, request.camera_confidence, cfg)


def load_captioner(kind: str = "template", path: str | None = None, device: str = "cpu",
                   caption_cfg: CaptionConfig | None = None, **vlm_options) -> Captioner:
    """A captioner by kind: ``"template"``, ``"vlm"`` (``path`` = local model folder; extra keyword
    arguments go to ``VLMConfig``) or ``"package.module:ClassName"`` (built as
    ``ClassName(path=path, device=device)``). A ``"vlm"`` without ``path`` comes back disabled."""
    if kind == "template":
        return TemplateCaptioner(caption_cfg)
    if kind == "vlm":
        return VLMCaptioner(VLMConfig(path=path, device=device, **vlm_options), caption_cfg)
    if ":" in kind:
        module, _, cls_name = kind.partition(":")
        cls = getattr(importlib.import_module(module), cls_name)
        obj = cls(path=path, device=device)
        if not callable(getattr(obj, "caption", None)):
            raise TypeError(f"{kind} has no caption(request) method")
        return obj
    raise ValueError(f"unknown captioner kind {kind!r}: 'template', 'vlm' or 'package.module:ClassName'")


# -- tiny models for tests -------------------------------------------------------------------------
_TINY_WORDS = ("a the video of dog cat runs walks in on green field street city car red blue sky water "
               "man woman camera scene bright dark forest river house tree people bird").split()


def _tiny_tokenizer(extra: dict[str, str] | None = None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "<image>": 4}
    for w in (*_TINY_WORDS, "describe", "this", "user", "assistant", ":", ".", ",", "in", "detail", "one",
              "paragraph", "setting", "main", "subjects", "and", "what", "they", "do", "colours", "lighting",
              "camera's", "viewpoint", "not", "mention", "these", "instructions"):
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", **(extra or {})), vocab


def make_tiny_vlm(path: str | Path, arch: str = "llava", seed: int = 0) -> Path:
    """Write a tiny randomly initialised image-text-to-text model folder for tests, with a tokenizer
    built offline (a word-level vocabulary of a few dozen words) and its processor:

    * ``arch="llava"``: a chat VLM (``LlavaForConditionalGeneration``: CLIP-ViT tower + Llama, 32-d,
      32-px images) with a ``LlavaProcessor`` and a minimal chat template;
    * ``arch="vision-encoder-decoder"``: a plain captioner (ViT encoder + GPT-2 decoder) with a
      ``ViTImageProcessor`` and no chat template.

    Special tokens (pad, bos, eos, unk, image) are suppressed in the saved generation config, so the
    random model always emits words and stops only at ``max_new_tokens`` — the bound under test."""
    import torch

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    special = [0, 1, 2, 3, 4]
    if arch == "llava":
        from transformers import (
            CLIPImageProcessor,
            CLIPVisionConfig,
            LlamaConfig,
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaProcessor,
        )

        tok, vocab = _tiny_tokenizer({"extra_special_tokens": {"image_token": "<image>"}})
        chat = ("{% for m in messages %}{{ m['role'] }} : {% for c in m['content'] %}"
                "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}"
                "{% endfor %}{% if add_generation_prompt %}assistant : {% endif %}")
        vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, projection_dim=32)
        text = LlamaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512,
                           bos_token_id=1, eos_token_id=2, pad_token_id=0)
        model = LlavaForConditionalGeneration(LlavaConfig(
            vision_config=vision, text_config=text, image_token_index=vocab["<image>"],
            vision_feature_layer=-1, vision_feature_select_strategy="default"))
        processor = LlavaProcessor(
            image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
            tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
            num_additional_image_tokens=1, chat_template=chat, image_token="<image>")
        gen = model.generation_config
        gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = 1, 2, 0
    elif arch == "vision-encoder-decoder":
        from transformers import (
            GPT2Config,
            VisionEncoderDecoderConfig,
            VisionEncoderDecoderModel,
            ViTConfig,
            ViTImageProcessor,
        )

        tok, vocab = _tiny_tokenizer()
        enc = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64)
        dec = GPT2Config(vocab_size=len(vocab), n_positions=256, n_embd=32, n_layer=1, n_head=2,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
        cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
        cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = 1, 0, 2
        model = VisionEncoderDecoderModel(config=cfg)
        gen = model.generation_config
        gen.decoder_start_token_id, gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = 1, 1, 2, 0
        processor = None
        tok.save_pretrained(path)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    else:
        raise ValueError(f"unknown tiny vlm arch {arch!r}")
    gen.suppress_tokens = special
    model.save_pretrained(path)
    if processor is not None:
        processor.save_pretrained(path)
    return path
