"""A memory and throughput plan for a training schedule: per stage and per parallelism strategy
(ddp / fsdp / hsdp, with and without activation checkpointing), the bytes each GPU holds at its
peak, whether that fits, and the FLOPs of one optimizer step. `reelflow train --plan SCHEDULE`
prints it (flows/cli_train.py); docs/training-plan.md explains how to read it.

Everything here is arithmetic on the model configs: no model is built (Movie Gen's 30B video
transformer is counted from its dimensions), no torch tensor is allocated. The formulas follow
what this repository's code does, not a generic transformer:

* Parameters are counted layer by layer from models/*.py (tests/training/test_plan.py checks the
  count against ``sum(p.numel())`` of the built tiny and small models and of the moviegen sizes
  built on the meta device).
* The trained module is fp32 (its weights are the fp32 "master" copy; there is no other) and
  trains with AdamW (two fp32 moments). Under ``precision: bf16`` on GPU the loop runs the forward
  under ``torch.autocast(bfloat16)``; FSDP2 gathers bf16 parameters (MixedPrecisionPolicy) and
  reduces gradients in fp32 (training/parallel.py).
* Activations are what autograd saves, tensor by tensor, for models/layers.py:Block and the TAE's
  2.5-D convolutions (the derivation is beside each formula). Attention goes through
  F.scaled_dot_product_attention, whose flash / memory-efficient kernels (CUDA, and CPU in the
  torch this repo pins) save q, k, v, the output and a log-sum-exp: no N x N score matrix. The
  "math" fallback would save B x heads x N x N probabilities per block; ``attention="math"`` adds them.
* training/loop.py puts *every* model on the device in fp32 (TAE, text encoder, video, audio),
  trained or not, and zeroes gradients only after the forward pass: a step's forward runs with
  the previous step's gradients still allocated. Both are counted as the code does them.

Measured against this module (tests/training/test_plan.py, docs/training-plan.md): the activation
estimate of a VideoTransformer step on CPU is within a few percent of the process's peak RSS.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from reelflow.models.audio_model import AudioConfig
from reelflow.models.configs import ModelConfig
from reelflow.models.tae import TAEConfig
from reelflow.models.text_encoder import TextEncoderConfig
from reelflow.models.video_transformer import VideoTransformerConfig
from reelflow.training.schedule import Schedule, StageSpec

GB = 10**9
GiB = 2**30

# The share of device memory a plan may use: the rest is the CUDA context, NCCL's buffers and the
# caching allocator's fragmentation (typically 2-8 GB on an 80 GB H100 at these sizes).
USABLE_FRACTION = 0.9
# Aspect buckets a dataset may hold (curation/policy.py's defaults) when the schedule names none:
# the plan takes the one with the most tokens, as the peak step does.
DEFAULT_BUCKETS = ("16x9", "4x3", "1x1", "3x4", "9x16")
# When the text backbone's config cannot be read (moviegen: an external T5/UL2 by path), it is
# taken to be UL2-20B's encoder (Movie Gen's reasoning encoder): d_model 4096, d_ff 16384 gated,
# 32 layers, 16 heads x 256, vocabulary 32128 -> 8.72B parameters, 35 GB in fp32 on every GPU.
# `reelflow train --plan --text-params` overrides the count.
ASSUMED_BACKBONE = {"d_model": 4096, "d_ff": 16384, "num_layers": 32, "num_heads": 16, "d_kv": 256,
                    "vocab_size": 32128, "feed_forward_proj": "gated-silu", "relative_attention_num_buckets": 32}
ASSUMED_BACKBONE_DIM = 4096
# Throughput figures: H100 SXM dense bf16 peak and an assumed model-FLOPs utilisation (Movie Gen
# publishes none). Only the "s/step" column depends on them.
H100_BF16_FLOPS = 989e12
ASSUMED_MFU = 0.4
FP32, BF16 = 4, 2


# --------------------------------------------------------------------------------------------
# Memory sizes on the command line
# --------------------------------------------------------------------------------------------

_UNITS = {"": GB, "b": 1, "kb": 10**3, "mb": 10**6, "gb": GB, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": GiB, "tib": 2**40, "k": 10**3, "m": 10**6, "g": GB, "t": 10**12}


def parse_memory(text: str) -> int:
    """'80GB' -> 80e9 bytes, '80GiB' -> 80 * 2**30; a bare number is GB. ValueError otherwise."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise ValueError(f"not a memory size: {text!r} (e.g. 80GB, 80GiB, 141GB)")
    value = float(m.group(1)) * _UNITS[unit]
    if value <= 0:
        raise ValueError(f"memory size must be positive: {text!r}")
    return int(value)


def fmt_bytes(n: float) -> str:
    """Decimal units, as GPU memory is sold (80 GB)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def fmt_count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


# --------------------------------------------------------------------------------------------
# Parameter counts, from the configs (mirrors models/*.py layer by layer)
# --------------------------------------------------------------------------------------------

def linear_params(cin: int, cout: int, bias: bool = True) -> int:
    return cin * cout + (cout if bias else 0)


def block_params(dim: int, n_heads: int, ffn_dim: int, ffn_kind: str = "swiglu", qk_norm: bool = True) -> int:
    """models/layers.py:Block: self-attention and cross-attention (4 bias-free dim x dim each; the
    text is projected to `dim` before the blocks), per-head RMSNorm gains on q and k, the affine
    RMSNorm before cross-attention, the FFN (SwiGLU: 3 matrices, GELU: 2) and the (6, dim) adaLN table."""
    head_dim = dim // n_heads
    attn = 4 * dim * dim + (2 * head_dim if qk_norm else 0)
    ffn = (3 if ffn_kind == "swiglu" else 2) * dim * ffn_dim
    return 2 * attn + dim + ffn + 6 * dim


def _time_embedder_params(dim: int, freq_dim: int = 256) -> int:
    return linear_params(freq_dim, dim) + linear_params(dim, dim)


def video_transformer_params(cfg: VideoTransformerConfig, grid: tuple[int, int, int] | None = None) -> tuple[int, int]:
    """(total, one block) of models/video_transformer.py:VideoTransformer. ``grid`` (latent frames,
    patch rows, patch columns) sizes the positional tables as a stage's hand-off does
    (training/handoff.py); default: the config's."""
    pt, ph, pw = cfg.patch_size
    d = cfg.dim
    rows = grid if grid is not None else (cfg.max_frames // pt, cfg.max_height, cfg.max_width)
    out = pt * ph * pw * cfg.latent_channels
    blk = block_params(d, cfg.n_heads, cfg.ffn_dim, cfg.ffn_kind, cfg.qk_norm)
    total = (cfg.latent_channels * pt * ph * pw * d + d  # patch_embed Conv3d
             + sum(rows) * d  # factorised positions: T + H + W rows
             + _time_embedder_params(d) + linear_params(d, 6 * d)  # time embedding, adaLN-single
             + linear_params(cfg.text_dim, d, bias=False) + d  # text_proj, text_norm
             + cfg.n_layers * blk
             + linear_params(d, 2 * d) + linear_params(d, out))  # final modulation and projection
    return total, blk


def audio_transformer_params(cfg: AudioConfig) -> tuple[int, int]:
    """(total, one block) of models/audio_model.py:AudioTransformer."""
    d, c = cfg.dim, cfg.n_mels
    blk = block_params(d, cfg.n_heads, cfg.ffn_dim, cfg.ffn_kind, cfg.qk_norm)
    total = (linear_params(2 * c + 1, d) + linear_params(cfg.video_dim, d) + cfg.window_frames * d
             + _time_embedder_params(d) + linear_params(d, 6 * d)
             + linear_params(cfg.text_dim, d, bias=False) + d
             + cfg.n_layers * blk
             + linear_params(d, 2 * d) + linear_params(d, c))
    return total, blk


def _conv25d_params(cin: int, cout: int) -> int:
    return cin * cout * 9 + cout + cout * cout * 3 + cout  # 3x3 spatial, then 3-tap temporal


def _resblock_params(cin: int, cout: int) -> int:
    skip = cin * cout + cout if cin != cout else 0  # 1x1x1 Conv3d when the width changes
    return 2 * cin + _conv25d_params(cin, cout) + 2 * cout + _conv25d_params(cout, cout) + skip


def _attnblock_params(c: int) -> int:
    return 2 * (2 * c + linear_params(c, 3 * c) + linear_params(c, c))  # spatial + temporal halves


def tae_params(cfg: TAEConfig) -> tuple[int, int]:
    """(total, larger of encoder/decoder) of models/tae.py:TemporalAutoencoder (GroupNorms affine)."""
    chans = [cfg.base_channels * m for m in cfg.channel_mults]
    enc = _conv25d_params(cfg.in_channels, chans[0])
    cin = chans[0]
    for i, cout in enumerate(chans):
        for _ in range(cfg.num_res_blocks):
            enc += _resblock_params(cin, cout)
            cin = cout
        if i < len(chans) - 1:
            enc += _conv25d_params(cin, cin)
    mid = 2 * _resblock_params(cin, cin) + (_attnblock_params(cin) if cfg.attention else 0)
    enc += mid + 2 * cin + _conv25d_params(cin, 2 * cfg.latent_channels)
    dec = _conv25d_params(cfg.latent_channels, chans[-1]) + mid
    cin = chans[-1]
    for i in reversed(range(len(chans))):
        for _ in range(cfg.num_res_blocks):
            dec += _resblock_params(cin, chans[i])
            cin = chans[i]
        if i > 0:
            dec += _conv25d_params(cin, cin)  # Upsample's conv
    dec += 2 * cin + _conv25d_params(cin, cfg.in_channels)
    return enc + dec, max(enc, dec)


def text_trainable_params(cfg: TextEncoderConfig, backbone_dim: int | None) -> int:
    """models/text_encoder.py:TextEncoder without its frozen backbone: the backbone's projection and
    norm, and the byte-level encoder (nn.TransformerEncoderLayer: in/out projections, a 4x MLP, two
    LayerNorms; no final norm) with its projection and norm."""
    n = 0
    if cfg.backbone != "none":
        n += (backbone_dim or ASSUMED_BACKBONE_DIM) * cfg.out_dim + cfg.out_dim
    if cfg.char_encoder:
        c = cfg.char_dim
        layer = linear_params(c, 3 * c) + linear_params(c, c) + linear_params(c, 4 * c) + linear_params(4 * c, c) + 4 * c
        n += 258 * c + (cfg.char_max_length + 1) * c + cfg.char_layers * layer + c * cfg.out_dim + cfg.out_dim
    return n


def _minilm_dir() -> str | None:
    try:
        from reelflow.models.text_encoder import minilm_path

        return minilm_path()
    except Exception:  # the weights package is optional for a plan
        return None


def backbone_config(cfg: TextEncoderConfig) -> dict | None:
    """The frozen backbone's Hugging Face config.json (never its weights), or None if unreadable."""
    if cfg.backbone == "none":
        return None
    path = cfg.path or (_minilm_dir() if cfg.backbone == "minilm" else None)
    if not path:
        return None
    f = Path(path) / "config.json"
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return None


def backbone_params(hf: dict) -> tuple[int, int] | None:
    """(parameters, output width) of a BERT-style encoder (models/bert.py: no pooler) or a T5/UL2
    encoder (the part `load_backbone` keeps), from its config.json; None for other architectures."""
    if "d_model" in hf and "num_layers" in hf:  # T5 / UL2 encoder stack
        d, inner = hf["d_model"], hf.get("num_heads", 1) * hf.get("d_kv", hf["d_model"] // hf.get("num_heads", 1))
        gated = str(hf.get("feed_forward_proj", "relu")).startswith("gated")
        layer = 4 * d * inner + (3 if gated else 2) * d * hf["d_ff"] + 2 * d
        rel = hf.get("relative_attention_num_buckets", 32) * hf.get("num_heads", 1)
        return hf["vocab_size"] * d + hf["num_layers"] * layer + rel + d, d
    if "hidden_size" in hf and "num_hidden_layers" in hf:  # BERT family
        h, i = hf["hidden_size"], hf["intermediate_size"]
        emb = (hf["vocab_size"] + hf.get("max_position_embeddings", 512) + hf.get("type_vocab_size", 2)) * h + 2 * h
        layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
        # no pooler: models/bert.py (how load_backbone reads a BERT folder) has none; a BERT it
        # cannot read loads through AutoModel with one, h * h + h more (0.7% of MiniLM)
        return emb + hf["num_hidden_layers"] * layer, h
    return None


@dataclass(frozen=True)
class ParamCounts:
    """Parameters one stage holds on each device, by part."""

    trained: int  # the module the stage trains (with the text encoder's trainable parts for video)
    units: int  # its repeated units: FSDP shards and checkpoints each on its own (transformer blocks; TAE encoder/decoder)
    unit_params: int  # parameters of the largest unit
    frozen: dict[str, int]  # part -> parameters of the frozen parts training/loop.py moves to the device
    needed: frozenset[str]  # the frozen parts the stage's step actually runs
    notes: tuple[str, ...] = ()

    @property
    def root(self) -> int:
        """Trained parameters outside the units (embeddings, adaLN, final layer, text parts)."""
        return self.trained - self.units * self.unit_params


def stage_params(config: ModelConfig, stage: StageSpec, grid: tuple[int, int, int] | None,
                 text_params: int | None = None) -> ParamCounts:
    """``text_params``: the frozen text backbone's parameter count when known from elsewhere
    (overrides its config.json, or the UL2-20B assumption when that cannot be read)."""
    notes: list[str] = []
    hf = backbone_config(config.text)
    counted = backbone_params(hf) if hf else None
    if config.text.backbone != "none" and counted is None:
        counted = backbone_params(ASSUMED_BACKBONE)
        if text_params is None:
            notes.append(f"text backbone {config.text.path or config.text.backbone!r} is not readable here: taken "
                         f"as UL2-20B's encoder ({fmt_count(counted[0])} params, {fmt_bytes(FP32 * counted[0])} fp32 "
                         "on every GPU); --text-params sets it")
    if text_params is not None and config.text.backbone != "none":
        counted = (text_params, counted[1] if counted else ASSUMED_BACKBONE_DIM)
    backbone_dim = counted[1] if counted else None
    parts = {
        "tae": tae_params(config.tae)[0],
        "text backbone": counted[0] if counted else 0,
        "text (trainable)": text_trainable_params(config.text, backbone_dim),
        "video": video_transformer_params(config.video, grid if stage.model == "video" else None)[0],
    }
    if config.audio is not None:
        parts["audio"] = audio_transformer_params(config.audio)[0]
    if stage.model == "tae":
        trained, (units, unit) = ["tae"], (2, tae_params(config.tae)[1])
        needed: set[str] = set()
    elif stage.model == "video":
        trained = ["video", "text (trainable)"]
        units, unit = config.video.n_layers, video_transformer_params(config.video)[1]
        needed = {"tae", "text backbone"}
    else:
        if config.audio is None:
            raise ValueError(f"stage {stage.name} trains the audio model; the config has none")
        trained = ["audio"]
        units, unit = config.audio.n_layers, audio_transformer_params(config.audio)[1]
        needed = {"text backbone", "text (trainable)"} | ({"tae"} if config.audio.video_features == "latents" else set())
    # training/loop.py places on the device only the models the stage's step runs (the idle audio
    # model of a video stage stays on the host: 50 GB a GPU at Movie Gen's size).
    frozen = {k: v for k, v in parts.items() if k not in trained and k in needed and v}
    return ParamCounts(trained=sum(parts[k] for k in trained), units=units, unit_params=unit, frozen=frozen,
                       needed=frozenset(needed & set(frozen)), notes=tuple(notes))


# --------------------------------------------------------------------------------------------
# Activations, per sample
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Activations:
    """Bytes autograd keeps for one sample of a stage's trained module, by unit.

    ``units[i] = (full, checkpointed)``: what unit i saves without activation checkpointing, and
    what a checkpointed unit keeps instead (its inputs). ``outside``: saved outside the units
    (embeddings, final layer, loss). ``work``: the backward pass's own buffers beyond them.
    """

    units: tuple[tuple[float, float], ...]
    outside: float
    work: float
    wrap_all: bool = False  # the TAE: any checkpointing wraps both encoder and decoder

    def peak(self, every: int) -> float:
        """At the end of the forward pass (no checkpointing: everything saved), or during the
        backward of a checkpointed unit: the checkpoints, the unwrapped units, and one unit's full
        activations recomputed (training/parallel.py wraps unit i when i % every == 0)."""
        if every <= 0:
            return sum(f for f, _ in self.units) + self.outside + self.work
        wrapped = [self.wrap_all or i % every == 0 for i in range(len(self.units))]
        kept = sum(c if w else f for (f, c), w in zip(self.units, wrapped))
        recompute = max((f for (f, _), w in zip(self.units, wrapped) if w), default=0.0)
        return kept + recompute + self.outside + self.work


def block_activation_bytes(dim: int, n_heads: int, ffn_dim: int, ffn_kind: str, tokens: int, text_tokens: int,
                           bf16: bool, attention: str = "flash") -> float:
    """Bytes one models/layers.py:Block saves for one sample of `tokens` tokens.

    Elements per token, read off the block tensor by tensor (and checked against autograd's saved
    tensors in tests/training/test_plan.py), d = dim, f = ffn_dim, h = heads:

    fp32 (no autocast): 25 d + 4 f + 5 h + 3 (SwiGLU; GELU saves 2 f)
      self-attention 13 d: the block input (RMSNorm), the normalised and the modulated input,
        q and k before, after RMSNorm and after its gain (6 d), v, the attention output, its
        transposed copy (input of wo), wo's output (gated); RMSNorm rstds, and SDPA's log-sum-exp;
      cross-attention 8 d: its input, normalised (pre-gain) and with gain, q three times, the
        output and wo's input (k, v come from the text: per sample, below);
      FFN 4 d + 4 f: input, normalised, modulated, w2's output; w1's and w3's outputs, SiLU's, and
        their product (GELU: w1's output and GELU's).
    bf16 autocast (GPU): the residual stream stays fp32 (the gates come from an fp32 adaLN table,
      so `gate * branch` promotes), RMSNorm runs in fp32, matmul inputs/outputs are bf16, and each
      Linear saves its own bf16 cast of an fp32 input: 12 d + 5 h + 3 fp32 and 16 d + 4 f bf16
      elements (GELU: 15 d + 2 f).
    Per sample: cross-attention k and v on `text_tokens` (and, in bf16, wk's and wv's casts of
    the text). ``attention="math"`` (SDPA without a fused kernel) adds the B x h x N x N softmax
    probabilities and their dropout-free copy: 2 h N^2 elements.
    """
    d, f, h, n, t = dim, ffn_dim, n_heads, tokens, text_tokens
    swiglu = ffn_kind == "swiglu"
    if bf16:
        per_token = FP32 * (12 * d + 5 * h + 3) + BF16 * ((16 * d + 4 * f) if swiglu else (15 * d + 2 * f))
        per_text = FP32 * (2 * d + h) + BF16 * 4 * d  # k before/after norm (fp32); k, v, 2 casts (bf16)
    else:
        per_token = FP32 * (25 * d + (4 if swiglu else 2) * f + 5 * h + 3)
        per_text = FP32 * (4 * d + h)
    total = n * per_token + t * per_text
    if attention == "math":
        total += 2 * h * n * n * (BF16 if bf16 else FP32)
    return float(total)


def transformer_activations(dim: int, n_heads: int, ffn_dim: int, ffn_kind: str, n_layers: int, tokens: int,
                            text_tokens: int, out_dim: int, bf16: bool, attention: str = "flash") -> Activations:
    """One sample through `n_layers` blocks. A checkpointed block keeps its input (the residual
    stream, fp32 after the first block under autocast too); the modulation vector and the text
    are shared by all blocks. Outside the blocks: the final layer's norm, modulation and
    projection input (3 d) and the output with the flow-matching loss's tensors (~4 out_dim), all
    fp32, and the projected text every block attends to. The backward pass holds the residual stream's gradient in and out of the block it is in
    (2 d, fp32)."""
    full = block_activation_bytes(dim, n_heads, ffn_dim, ffn_kind, tokens, text_tokens, bf16, attention)
    ckpt = float(FP32 * tokens * dim)
    outside = float(FP32 * (tokens * (3 * dim + 4 * out_dim) + text_tokens * dim))
    work = float(FP32 * tokens * 2 * dim)
    return Activations(units=((full, ckpt),) * n_layers, outside=outside, work=work)


@dataclass(frozen=True)
class _TaeWalk:
    """Running sums of a walk through the TAE at one sample's shape."""

    cb: int = FP32  # bytes of the convolutions' dtype (bf16 under autocast)
    conv: float = 0.0  # saved elements in the convolutions' dtype
    norm: float = 0.0  # saved elements GroupNorm/SiLU keep in fp32 (autocast runs group_norm in fp32)
    flops: float = 0.0  # forward FLOPs
    transient: float = 0.0  # bytes: the largest live set of a no-grad pass (approximate)


def _conv25d(w: _TaeWalk, cin: int, cout: int, shape: tuple[int, int, int], s: int = 1, ts: int = 1,
             held: float = 0.0, arg_bytes: int | None = None) -> tuple[_TaeWalk, tuple[int, int, int]]:
    """models/tae.py:Conv25d saves its input (a view of frame-major memory, or a copy of a
    (B,C,T,H,W)-ordered one: the same size either way) and, for the temporal conv's matmul, its
    three taps stacked (3 C channels at each output frame). Its (C, 3C) weight copy is per batch and
    ignored.

    Without grad, what is live besides `held` (what the caller keeps: a ResBlock's input) and the
    argument (`arg_bytes` per element: fp32 when it comes from a SiLU under autocast) is the
    largest of: the input's copy and its cast; the cast and the spatial output; that and its
    padded copy; padded, taps and temporal output."""
    t, h, wd = shape
    h2, w2 = -(-h // s), -(-wd // s)
    t2 = (t + 2 - 3) // ts + 1
    x_in, y = cin * t * h * wd, cout * t * h2 * w2
    pad = cout * (t + 2) * h2 * w2
    taps = 3 * cout * t2 * h2 * w2
    out = cout * t2 * h2 * w2
    flops = 2 * cin * 9 * cout * t * h2 * w2 + 2 * cout * 3 * cout * t2 * h2 * w2
    cb = w.cb
    ab = cb if arg_bytes is None else arg_bytes
    live = max(x_in * ab + (x_in * cb if ab != cb else 0), (x_in + y) * cb, (y + pad) * cb, (pad + taps + out) * cb)
    return replace(w, conv=w.conv + x_in + taps, flops=w.flops + flops,
                   transient=max(w.transient, held + x_in * ab + live)), (t2, h2, w2)


def _norm_silu(w: _TaeWalk, c: int, shape: tuple[int, int, int], held: float = 0.0) -> _TaeWalk:
    """FrameGroupNorm saves its (B*T, C, H, W) copy of the input, SiLU the norm's output (both fp32
    under autocast). Without grad: the input, its copy or fp32 cast, and the norm's output."""
    s = c * math.prod(shape)
    live = held + s * w.cb + 2 * s * FP32 + (s * w.cb if w.cb != FP32 else 0)
    return replace(w, norm=w.norm + 2 * s, transient=max(w.transient, live))


def _resblock(w: _TaeWalk, cin: int, cout: int, shape: tuple[int, int, int]) -> tuple[_TaeWalk, tuple[int, int, int]]:
    x = cin * math.prod(shape)
    w = _norm_silu(w, cin, shape)
    w, shape = _conv25d(w, cin, cout, shape, held=x * w.cb, arg_bytes=FP32)  # the residual input stays live
    y = cout * math.prod(shape)
    w = _norm_silu(w, cout, shape, held=x * w.cb)
    w, shape = _conv25d(w, cout, cout, shape, held=(x + y) * w.cb, arg_bytes=FP32)
    if cin != cout:  # the 1x1x1 skip conv saves the block input: the storage norm1 saved already
        w = replace(w, flops=w.flops + 2 * cin * cout * math.prod(shape))
    return w, shape


def _attnblock(w: _TaeWalk, c: int, shape: tuple[int, int, int]) -> _TaeWalk:
    """Spatial then temporal single-head attention; each half saves the norm's input copy (fp32),
    the qkv input copy, the fused qkv output (3 c), the output (c) and a log-sum-exp."""
    t, h, wd = shape
    s = t * h * wd
    flops = 2 * (2 * (3 * c * c + c * c) * s) + 4 * t * (h * wd) ** 2 * c + 4 * h * wd * t * t * c
    return replace(w, norm=w.norm + 2 * (c * s + s), conv=w.conv + 2 * 5 * c * s, flops=w.flops + flops,
                   transient=max(w.transient, 6 * c * s * w.cb))


def tae_walk(cfg: TAEConfig, frames: int, height: int, width: int, decoder: bool = True,
             bf16: bool = False) -> tuple[_TaeWalk, _TaeWalk]:
    """(encoder, decoder) walks for one sample of `frames` x height x width pixels."""
    cb = BF16 if bf16 else FP32
    chans = [cfg.base_channels * m for m in cfg.channel_mults]
    enc = _TaeWalk(cb=cb)
    shape = (frames, height, width)
    enc, shape = _conv25d(enc, cfg.in_channels, chans[0], shape, arg_bytes=FP32)  # pixels are fp32
    cin = chans[0]
    for i, cout in enumerate(chans):
        for _ in range(cfg.num_res_blocks):
            enc, shape = _resblock(enc, cin, cout, shape)
            cin = cout
        if i < len(chans) - 1:
            enc, shape = _conv25d(enc, cin, cin, shape, s=2, ts=2 if i < cfg.temporal_downsamples else 1)
    enc, shape = _resblock(enc, cin, cin, shape)
    if cfg.attention:
        enc = _attnblock(enc, cin, shape)
    enc, shape = _resblock(enc, cin, cin, shape)
    enc = _norm_silu(enc, cin, shape)
    enc, latent_shape = _conv25d(enc, cin, 2 * cfg.latent_channels, shape, arg_bytes=FP32)
    dec = _TaeWalk(cb=cb)
    if not decoder:
        return enc, dec
    shape = latent_shape
    dec, shape = _conv25d(dec, cfg.latent_channels, chans[-1], shape, arg_bytes=FP32)
    cin = chans[-1]
    dec, shape = _resblock(dec, cin, cin, shape)
    if cfg.attention:
        dec = _attnblock(dec, cin, shape)
    dec, shape = _resblock(dec, cin, cin, shape)
    for i in reversed(range(len(chans))):
        for _ in range(cfg.num_res_blocks):
            dec, shape = _resblock(dec, cin, chans[i], shape)
            cin = chans[i]
        if i > 0:  # Upsample: nearest 2x in space (and time: 1 + 2(T-1) frames), then a Conv25d
            t, h, wd = shape
            shape = (1 + 2 * (t - 1) if (i - 1) < cfg.temporal_downsamples and t > 1 else t, 2 * h, 2 * wd)
            dec, shape = _conv25d(dec, cin, cin, shape)
    dec = _norm_silu(dec, cin, shape)
    dec, shape = _conv25d(dec, cin, cfg.in_channels, shape, arg_bytes=FP32)
    return enc, dec


def tae_activations(cfg: TAEConfig, frames: int, height: int, width: int, bf16: bool) -> Activations:
    """The TAE stage's trained autoencoder, one sample: the encoder and the decoder are its two
    units (training/parallel.py checkpoints and shards them whole). Outside them: the posterior
    sample (a few latent-sized tensors) and the reconstruction loss (L1 and L2 each save the
    pixel difference, fp32)."""
    enc, dec = tae_walk(cfg, frames, height, width, bf16=bf16)
    cb = BF16 if bf16 else FP32

    def nbytes(w: _TaeWalk) -> float:
        return w.conv * cb + w.norm * FP32

    latent = cfg.latent_channels * cfg.latent_frames(frames) * (height // cfg.spatial_compression) * (
        width // cfg.spatial_compression)
    pixels = cfg.in_channels * frames * height * width
    outside = FP32 * (5 * latent + (2 if cfg.mse_weight else 1) * pixels)
    units = ((nbytes(enc), float(FP32 * pixels)), (nbytes(dec), float(FP32 * 2 * latent)))
    return Activations(units=units, outside=outside, work=float(FP32 * 2 * pixels), wrap_all=True)


def tae_encode_transient(cfg: TAEConfig, frames: int, height: int, width: int, bf16: bool) -> float:
    """Bytes live at the peak of one sample's no-grad TAE encode (the frozen TAE in video stages:
    training/steps.py:encode_latents, untiled): a Conv25d's input, rearranged, padded and
    temporal outputs with the residual its ResBlock holds; GroupNorm and SiLU in fp32 under
    autocast. Approximate: it follows the tensors models/tae.py creates, not a measured GPU peak
    (on CPU, oneDNN's blocked-layout copies put the measured peak ~20% above it)."""
    enc, _ = tae_walk(cfg, frames, height, width, decoder=False, bf16=bf16)
    return enc.transient


# --------------------------------------------------------------------------------------------
# Work per sample: tokens and FLOPs
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    """One sample of one batch kind (image or video) of a stage."""

    kind: str  # image | video
    frames: int  # pixel frames
    height: int  # pixels (the bucket with the most tokens)
    width: int
    tokens: int  # sequence length of the trained transformer (TAE: latent positions, for reference)
    text_tokens: int
    train_flops: float  # forward FLOPs of the trained module, one sample
    unit_flops: float  # forward FLOPs of one unit (what activation checkpointing recomputes)
    frozen_flops: float  # forward FLOPs of the frozen models the step runs (the TAE encode)
    activations: Activations
    encode_bytes: float  # no-grad TAE encode peak for one sample (0 if the stage encodes nothing)


def _text_tokens(cfg: TextEncoderConfig) -> int:
    """Longest condition sequence: the backbone's max_length plus the byte encoder's BOS + bytes."""
    n = cfg.max_length if cfg.backbone != "none" else 0
    return n + (cfg.char_max_length + 1 if cfg.char_encoder else 0)


def transformer_forward_flops(dim: int, ffn_dim: int, ffn_kind: str, n_layers: int, tokens: int,
                              text_tokens: int, per_token_extra: int) -> tuple[float, float]:
    """(whole, one block) forward FLOPs for one sample: 2 x multiply-adds of every matmul
    (self-attention q,k,v,o and cross-attention q,o per token; cross k,v per text token; the FFN),
    plus attention's QK^T and AV: 4 N^2 d per block (self) and 4 N L d (cross). Training is three
    forwards (backward = 2x); the brief's "6 P tokens + 12 L d N^2" is this at scale."""
    d, n, t = dim, tokens, text_tokens
    ffn = (3 if ffn_kind == "swiglu" else 2) * d * ffn_dim
    blk = 2 * n * (6 * d * d + ffn) + 2 * t * 2 * d * d + 4 * n * n * d + 4 * n * t * d
    return float(n_layers * blk + 2 * n * per_token_extra), float(blk)


def stage_workloads(schedule: Schedule, config: ModelConfig, stage: StageSpec, bf16: bool,
                    attention: str = "flash") -> dict[str, Workload]:
    """The batch kinds a stage trains on (a joint stage: image and video), each at the aspect
    bucket with the most tokens."""
    from reelflow.training.data import bucket_size
    from reelflow.training.handoff import spatial_multiple

    kinds = {"image": ["image"], "video": ["video"], "joint": ["image", "video"]}[stage.data]
    buckets = schedule.buckets or DEFAULT_BUCKETS
    tae = config.tae
    s = tae.spatial_compression
    out: dict[str, Workload] = {}
    for kind in kinds:
        frames = 1 if kind == "image" else stage.frames
        lt = tae.latent_frames(frames)
        best = None
        for aspect in buckets:
            h, w = bucket_size(aspect, stage.resolution, spatial_multiple(config))
            if stage.model == "video":
                _, ph, pw = config.video.patch_size
                n = (lt // config.video.patch_size[0]) * math.ceil(h / s / ph) * math.ceil(w / s / pw)
            else:
                n = lt * (h // s) * (w // s)
            if best is None or n > best[0]:
                best = (n, h, w)
        n, h, w = best
        enc_walk, _ = tae_walk(tae, frames, h, w, decoder=False)
        if stage.model == "tae":
            e, dcd = tae_walk(tae, frames, h, w)
            acts = tae_activations(tae, frames, h, w, bf16)
            out[kind] = Workload(kind, frames, h, w, n, 0, e.flops + dcd.flops, max(e.flops, dcd.flops), 0.0, acts, 0.0)
            continue
        t = _text_tokens(config.text)
        if stage.model == "video":
            v = config.video
            pt, ph, pw = v.patch_size
            out_dim = pt * ph * pw * v.latent_channels
            fl, blk = transformer_forward_flops(v.dim, v.ffn_dim, v.ffn_kind, v.n_layers, n, t,
                                                v.latent_channels * pt * ph * pw * v.dim + v.dim * out_dim)
            acts = transformer_activations(v.dim, v.n_heads, v.ffn_dim, v.ffn_kind, v.n_layers, n, t, out_dim,
                                           bf16, attention)
            # `latents: true` (training/latents.py): video batches read precomputed latents, so the
            # step runs no TAE; image batches of a joint stage still encode on the fly
            precomputed = kind == "video" and getattr(stage, "latents", False)
            encode = 0.0 if precomputed else tae_encode_transient(tae, frames, h, w, bf16)
            out[kind] = Workload(kind, frames, h, w, n, t, fl, blk, 0.0 if precomputed else enc_walk.flops, acts,
                                 encode)
        else:
            from reelflow.training.steps import audio_frames

            a = config.audio
            na = audio_frames(a, frames, stage.fps)
            fl, blk = transformer_forward_flops(a.dim, a.ffn_dim, a.ffn_kind, a.n_layers, na, t,
                                                (2 * a.n_mels + 1) * a.dim + a.video_dim * a.dim + a.dim * a.n_mels)
            acts = transformer_activations(a.dim, a.n_heads, a.ffn_dim, a.ffn_kind, a.n_layers, na, t, a.n_mels,
                                           bf16, attention)
            latents = a.video_features == "latents"
            out[kind] = Workload(kind, frames, h, w, na, t, fl, blk, enc_walk.flops if latents else 0.0, acts,
                                 tae_encode_transient(tae, frames, h, w, bf16) if latents else 0.0)
    return out


# --------------------------------------------------------------------------------------------
# Strategies: bytes per GPU
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    """One way to run a stage: a strategy, its sharding, and activation checkpointing."""

    strategy: str  # ddp | fsdp | hsdp
    shard: int  # GPUs a parameter is sharded over (ddp: 1; fsdp: N; hsdp: N / replicate)
    every: int  # activation checkpointing: 0 off, 1 full, k every k-th unit
    replicate: int = 1

    @property
    def short(self) -> str:
        """Strategy and checkpointing without the GPU counts (for a plan that changes them)."""
        ac = {0: "off", 1: "full"}.get(self.every, f"every {self.every}")
        return f"{self.strategy}, AC {ac}"

    @property
    def label(self) -> str:
        s = {"ddp": "ddp", "fsdp": f"fsdp/{self.shard}", "hsdp": f"hsdp {self.replicate}x{self.shard}"}[self.strategy]
        ac = {0: "off", 1: "full"}.get(self.every, f"every {self.every}")
        return f"{s}, AC {ac}"


@dataclass(frozen=True)
class Memory:
    """Bytes on one GPU at the step's peak. ``peak`` is the largest of three moments:
    the forward/backward pass (activations), the frozen TAE encode before it, the optimizer step."""

    params: float  # trained parameters, fp32 (sharded by fsdp/hsdp)
    grads: float  # fp32 gradients: the previous step's are alive through the next forward
    optimizer: float  # AdamW exp_avg + exp_avg_sq, fp32
    frozen: float  # every other model, fp32, as training/loop.py places them
    activations: float  # saved activations (+ recompute and backward buffers), at the stage's per-GPU batch
    encode: float  # the frozen TAE encode's no-grad peak (video stages and latent-conditioned audio)
    temporaries: float  # FSDP gather/reduce buffers, DDP gradient buckets, autocast's bf16 weight copies
    step: float  # the optimizer step's own temporaries (foreach AdamW: one fp32 copy of the shards)

    @property
    def resident(self) -> float:
        return self.params + self.grads + self.optimizer + self.frozen

    @property
    def peak(self) -> float:
        return self.resident + max(self.activations + self.temporaries, self.encode, self.step)

    @property
    def peak_phase(self) -> str:
        phases = {"fwd/bwd": self.activations + self.temporaries, "encode": self.encode, "optimizer": self.step}
        return max(phases, key=phases.get)


def memory(p: ParamCounts, opt: Option, per_gpu_batch: int, acts_per_sample: float, encode_per_sample: float,
           bf16: bool, world: int, on_gpu: bool = True, drop_text_backbone: bool = False) -> Memory:
    """Bytes per GPU for one option (formulas in the field comments of Memory and below)."""
    shard = max(1, opt.shard)
    n = p.trained
    frozen = sum(v for k, v in p.frozen.items() if not (drop_text_backbone and k == "text backbone"))
    pb = BF16 if bf16 else FP32
    if opt.strategy == "ddp":
        # DDP's reducer keeps flat gradient buckets the size of all gradients (gradient_as_bucket_view
        # is off), from the first backward on; autocast caches one bf16 copy of every weight it casts
        # from the forward until backward has used it.
        temps = (FP32 * n if world > 1 else 0) + (BF16 * n if bf16 else 0)
    else:
        # FSDP2: the root's parameters stay gathered; a block is gathered while it runs and the
        # next one is prefetched; the last block stays gathered for backward (reshard_after_forward
        # False). Backward adds one block's unsharded gradient (param dtype) and its fp32
        # reduce-scatter input.
        temps = pb * (p.root + 3 * p.unit_params) + (pb + FP32) * p.unit_params
    return Memory(
        params=FP32 * n / shard,
        grads=FP32 * n / shard,
        optimizer=2 * FP32 * n / shard,
        frozen=FP32 * frozen,
        activations=per_gpu_batch * acts_per_sample,
        encode=per_gpu_batch * encode_per_sample,
        temporaries=temps,
        step=(FP32 * n / shard) if on_gpu else 0.0,  # CPU AdamW loops per tensor (small temporaries)
    )


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    option: Option
    memory: Memory
    fits: str  # yes | tight | no
    configured: bool  # this is what the schedule asks for


@dataclass(frozen=True)
class StagePlan:
    stage: StageSpec
    params: ParamCounts
    workloads: dict[str, Workload]
    per_gpu_batch: int
    peak_kind: str  # the batch kind with the larger activations
    rows: list[Row]
    recommended: Row | None  # the cheapest option that fits as the code runs the stage
    needs: list[str]  # when nothing fits: what would have to change, in order
    then: Row | None  # and the cheapest option that fits after those changes
    flops_per_step: float  # all GPUs together, at the stage's image/video mix, with the chosen option's AC
    seconds_per_step: float | None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    schedule: Schedule
    gpus: int
    gpu_memory: int
    bf16: bool
    on_gpu: bool
    stages: list[StagePlan]

    @property
    def usable(self) -> float:
        return USABLE_FRACTION * self.gpu_memory


def fits(peak: float, gpu_memory: int) -> str:
    if peak <= USABLE_FRACTION * gpu_memory:
        return "yes"
    return "tight" if peak <= gpu_memory else "no"


def options(stage: StageSpec, gpus: int) -> list[Option]:
    """The options a plan weighs, cheapest first: no checkpointing before any (recompute costs a
    third more compute), and at the same checkpointing ddp (one all-reduce) before hsdp (shards
    inside a node, all-reduce across) before fsdp (gathers every block twice a step)."""
    par = stage.parallelism
    everys = [0] + ([par.checkpoint_every()] if par.checkpoint_every() > 1 else []) + [1]
    if par.strategy == "hsdp" and par.replicate and gpus % par.replicate == 0:
        replicate = par.replicate
    else:
        # default HSDP layout: shard inside an 8-GPU node, replicate across nodes
        replicate = gpus // 8 if gpus >= 16 and gpus % 8 == 0 else 0
    out = []
    for every in everys:
        out.append(Option("ddp", 1, every))
        if replicate and gpus // replicate > 1:
            out.append(Option("hsdp", gpus // replicate, every, replicate))
        out.append(Option("fsdp", gpus, every))
    return out


def _configured(stage: StageSpec, opt: Option) -> bool:
    par = stage.parallelism
    if par.strategy != opt.strategy or par.checkpoint_every() != opt.every:
        return False
    return par.strategy != "hsdp" or par.replicate == opt.replicate


@dataclass(frozen=True)
class Change:
    """Changes a plan tries, in this order, when no option fits the stage as the code runs it."""

    no_encode: bool = False  # precomputed (or tiled) latents: no untiled TAE encode in the step
    no_text_backbone: bool = False  # the frozen text backbone sharded or its embeddings precomputed
    per_gpu_batch: int | None = None  # fewer samples a GPU: more GPUs (no gradient accumulation)
    context_parallel: int = 1  # each sample's sequence split over this many GPUs (not implemented)


def evaluate(params: ParamCounts, workloads: dict[str, Workload], stage: StageSpec, gpus: int, gpu_memory: int,
             per_gpu: int, bf16: bool, on_gpu: bool, change: Change = Change()) -> list[Row]:
    """Every option of `options` for the stage, at its peak batch kind, under `change`."""
    rows = []
    enc = 0.0 if change.no_encode else max(w.encode_bytes for w in workloads.values())
    batch = change.per_gpu_batch or per_gpu
    for opt in options(stage, gpus):
        acts = max(w.activations.peak(opt.every) for w in workloads.values()) / change.context_parallel
        mem = memory(params, opt, batch, acts, enc, bf16, gpus, on_gpu, change.no_text_backbone)
        rows.append(Row(opt, mem, fits(mem.peak, gpu_memory), _configured(stage, opt)))
    return rows


def _first_fit(rows: list[Row]) -> Row | None:
    return next((r for r in rows if r.fits == "yes"), None)


def plan_stage(schedule: Schedule, config: ModelConfig, stage: StageSpec, gpus: int, gpu_memory: int,
               attention: str = "flash", text_params: int | None = None, peak_flops: float = H100_BF16_FLOPS,
               mfu: float = ASSUMED_MFU) -> StagePlan:
    from reelflow.training.data import bucket_size
    from reelflow.training.handoff import spatial_multiple

    on_gpu = schedule.use_gpu
    bf16 = schedule.precision == "bf16" and on_gpu  # training/loop.py autocasts on CUDA only
    per_gpu = math.ceil(stage.global_batch_size / gpus)
    notes: list[str] = []
    if stage.global_batch_size % gpus:
        notes.append(f"global batch {stage.global_batch_size} does not divide over {gpus} GPUs "
                     f"(the schedule would refuse it): {per_gpu} a GPU assumed")
    workloads = stage_workloads(schedule, config, stage, bf16, attention)
    grid = None
    if stage.model == "video":
        wl = workloads.get("video") or workloads["image"]
        s = config.tae.spatial_compression
        pt, ph, pw = config.video.patch_size
        sizes = [bucket_size(a, stage.resolution, spatial_multiple(config)) for a in (schedule.buckets or DEFAULT_BUCKETS)]
        grid = (config.tae.latent_frames(wl.frames) // pt, max(math.ceil(h / s / ph) for h, _ in sizes),
                max(math.ceil(w / s / pw) for _, w in sizes))
    params = stage_params(config, stage, grid, text_params)
    notes.extend(params.notes)
    rows = evaluate(params, workloads, stage, gpus, gpu_memory, per_gpu, bf16, on_gpu)
    recommended = _first_fit(rows)
    needs, then = ([], None) if recommended else _needs(params, workloads, stage, gpus, gpu_memory, per_gpu, bf16,
                                                        on_gpu)
    chosen = recommended or then
    every = chosen.option.every if chosen else 1
    peak_kind = max(workloads, key=lambda k: workloads[k].activations.peak(every))
    flops = _step_flops(workloads, stage, every, gpus * per_gpu)
    seconds = flops / gpus / (peak_flops * mfu) if on_gpu else None
    return StagePlan(stage, params, workloads, per_gpu, peak_kind, rows, recommended, needs, then, flops, seconds,
                     notes)


def _recompute_units(units: int, every: int, wrap_all: bool) -> int:
    if every <= 0:
        return 0
    return units if wrap_all else len(range(0, units, every))


def _step_flops(workloads: dict[str, Workload], stage: StageSpec, every: int, samples: int) -> float:
    """FLOPs of one optimizer step on all GPUs: 3 forwards of the trained module (forward and a
    backward of twice its cost) plus one more forward of every checkpointed unit, plus the frozen
    models' forward (the TAE encode), weighted by the stage's image/video mix."""
    def per_sample(w: Workload) -> float:
        if w.activations.wrap_all:  # the TAE: any checkpointing recomputes encoder and decoder
            recompute = w.train_flops if every else 0.0
        else:
            recompute = _recompute_units(len(w.activations.units), every, False) * w.unit_flops
        return 3 * w.train_flops + recompute + w.frozen_flops

    if stage.data == "joint":
        mix = stage.image_ratio * per_sample(workloads["image"]) + (1 - stage.image_ratio) * per_sample(workloads["video"])
    else:
        mix = per_sample(next(iter(workloads.values())))
    return samples * mix


def _needs(params: ParamCounts, workloads: dict[str, Workload], stage: StageSpec, gpus: int, gpu_memory: int,
           per_gpu: int, bf16: bool, on_gpu: bool) -> tuple[list[str], Row | None]:
    """When no option fits: the changes that would make one fit, each tried only if it removes
    part of the problem, in this order: precompute (or tile) the TAE latents when the encode is the peak; fewer samples per GPU (more GPUs:
    reelflow has no gradient accumulation); split each sample's sequence over GPUs
    (context/sequence parallelism, which reelflow does not implement). Returns the changes and
    the cheapest option that fits after them (None: even that is not enough)."""
    change = Change()
    needs: list[str] = []

    def rows(c: Change) -> list[Row]:
        return evaluate(params, workloads, stage, gpus, gpu_memory, per_gpu, bf16, on_gpu, c)

    def leanest(c: Change) -> Row:
        return min(rows(c), key=lambda r: r.memory.peak)

    if leanest(change).memory.peak_phase == "encode":
        change = replace(change, no_encode=True)
        kind = max(workloads, key=lambda k: workloads[k].encode_bytes)
        w = workloads[kind]
        how = ("precomputed latents (the stage's `latents: true`, which needs `window: start`)"
               if "latents" in type(stage).model_fields and stage.model == "video" and kind == "video"
               else "precomputed or tiled TAE latents")
        needs.append(f"{how}: the untiled encode of one {w.frames}x{w.height}x{w.width} px sample peaks at "
                     f"~{fmt_bytes(w.encode_bytes)} (Movie Gen trains 768 px on precomputed latents)")
        if (fit := _first_fit(rows(change))) is not None:
            return needs, fit
    text = FP32 * params.frozen.get("text backbone", 0)
    if text > 0.05 * gpu_memory:
        change = replace(change, no_text_backbone=True)
        needs.append(f"the frozen text backbone ({fmt_bytes(text)} fp32 on every GPU) sharded or its embeddings "
                     "precomputed (Movie Gen FSDP-shards UL2)")
        if (fit := _first_fit(rows(change))) is not None:
            return needs, fit
    if per_gpu > 1:
        for b in range(per_gpu - 1, 0, -1):
            if (fit := _first_fit(rows(replace(change, per_gpu_batch=b)))) is not None:
                needs.append(f"at most {b} sample(s) a GPU instead of {per_gpu}: >= "
                             f"{math.ceil(stage.global_batch_size / b)} GPUs for the global batch of "
                             f"{stage.global_batch_size} (reelflow has no gradient accumulation)")
                return needs, fit
        change = replace(change, per_gpu_batch=1)
        needs.append(f"1 sample a GPU (>= {stage.global_batch_size} GPUs; reelflow has no gradient accumulation), "
                     "which is not enough by itself")
    kind = max(workloads, key=lambda k: workloads[k].activations.peak(1))
    w = workloads[kind]
    for c in (2, 4, 8, 16, 32, 64):
        # every per-token activation divides by c; the k/v a block gathers from the other ranks
        # and the text are ignored, so c is a lower bound
        if (fit := _first_fit(rows(replace(change, context_parallel=c)))) is not None:
            groups = math.ceil(stage.global_batch_size / (change.per_gpu_batch or per_gpu))
            needs.append(f"context (sequence) parallelism over >= {c} GPUs per sample (>= {groups * c:,} GPUs): one "
                         f"{kind} sample is {w.tokens:,} tokens, {fmt_bytes(w.activations.peak(1))} of activations "
                         "even with full checkpointing. reelflow does not implement it (Movie Gen: tensor parallel 4 "
                         "with sequence parallelism, context parallel 2)")
            return needs, fit
    needs.append(f"more GPUs to shard over: parameters, gradients and optimizer states alone do not fit "
                 f"({fmt_bytes(leanest(change).memory.resident)} a GPU with fsdp over {gpus})")
    return needs, None


def plan_schedule(schedule: Schedule, gpus: int | None = None, gpu_memory: int = 80 * GB,
                  attention: str = "flash", text_params: int | None = None) -> Plan:
    """The plan for every stage of `schedule` on `gpus` devices (default: its num_workers) of
    `gpu_memory` bytes each."""
    from reelflow.training.handoff import model_config

    gpus = gpus or schedule.num_workers
    if gpus < 1:
        raise ValueError("gpus must be >= 1")
    config = model_config(schedule)
    stages = [plan_stage(schedule, config, st, gpus, gpu_memory, attention, text_params) for st in schedule.stages]
    return Plan(schedule, gpus, gpu_memory, schedule.precision == "bf16" and schedule.use_gpu, schedule.use_gpu, stages)
