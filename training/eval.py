"""Evaluate a generation checkpoint: prompts -> samples -> metrics measured on the samples.

``evaluate`` generates each prompt of a prompt set with each seed through the project's own
sampler (training/generate.py), saves the mp4, and measures what the sample shows from its
pixels and its audio alone (training/shape_metrics.py). A checkpoint whose video model is
untrained can still be judged on its TAE: ``evaluate_tae`` renders each probe prompt's ground
truth, encodes and decodes it, and measures the reconstruction (PSNR, SSIM, and whether the
object keeps its colour: a TAE that returns background fails loudly).

The audio model is also judged on its own, as a video-to-audio model (Movie Gen Audio's setting):
``evaluate_soundtrack`` renders each prompt's ground truth (moving so that it bounces within the
clip), generates the audio for that video, and measures bounce sync and silence against the
rendered bounces (``v2a_*``). A joint sample can only be judged on sound where the generated video
shows a bounce; this measures the audio model whatever the video model draws.

A prompt set is YAML (a list, or ``{prompts: [...]}``) or JSONL. Each entry is a prompt string or
``{prompt, colour?, shape?, direction?, audio?}``; expectations left out are read from the prompt
when it names them (the shapes caption format). The bundled probe set is built from
training/synthetic_shapes.py's vocabulary (``probe_prompts``).

With a CLIP checkpoint configured (``ClipEvalConfig``: ``reelflow eval --clip-checkpoint``, or the
schedule's ``eval.clip_checkpoint``), each sample also gets ``clip_score``: the cosine similarity
between the CLIP text embedding of its prompt and the mean of the L2-normalised CLIP image
embeddings of up to ``CLIP_FRAMES`` evenly spaced frames (open_clip weights loaded by path through
curation's ``load_open_clip``, never downloaded). Without one there is no ``clip_score`` at all:
not in the rows, not in the summary; a made-up number would read as a measurement.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from reelflow.training.shape_metrics import judge, measure, parse_prompt
from reelflow.training.synthetic_shapes import COLOURS, SHAPES, ShapeClip, render_clip

PROBE_DIRECTIONS = ("right", "left", "up", "down")
# Metric -> how the summary aggregates it (mean of per-sample 0/1 verdicts, or the median).
SUMMARY = {"present": "mean", "colour": "mean", "shape": "mean", "direction": "mean", "sync_ok": "mean",
           "silence_ok": "mean", "sync_error_ms": "median", "clip_score": "mean"}
# The audio model on rendered ground-truth video (evaluate_soundtrack), aggregated the same way.
V2A_SUMMARY = {"v2a_sync_ok": "mean", "v2a_silence_ok": "mean", "v2a_sync_error_ms": "median"}
# Measured only when configured: left out of the summary (not None, "measured nothing") otherwise.
OPTIONAL_METRICS = ("clip_score",)
CLIP_FRAMES = 8  # frames of a sample embedded for its CLIP score (evenly spaced; every frame when fewer)
CLIP_DISABLED = ("disabled: no CLIP checkpoint configured (reelflow eval --clip-checkpoint PATH --clip-model NAME; "
                 "in a schedule: eval.clip_checkpoint and eval.clip_model)")


class ClipEvalError(ValueError):
    """The configured CLIP model for evaluation is missing or cannot be loaded (names the path)."""


@dataclass(frozen=True)
class ClipEvalConfig:
    """open_clip weights to score text-video similarity with: a state-dict file for architecture
    ``model`` (registered from ``model_config``, an open_clip model-config JSON, when it is not
    built in), or a local open_clip model directory (``model`` then unused)."""

    checkpoint: str
    model: str | None = None
    model_config: str | None = None
    frames: int = CLIP_FRAMES

    @classmethod
    def from_spec(cls, spec) -> ClipEvalConfig | None:
        """From a schedule's ``eval:`` block (training.schedule.EvalSpec); None when it names no checkpoint."""
        checkpoint = getattr(spec, "clip_checkpoint", None)
        return cls(checkpoint, spec.clip_model, spec.clip_model_config) if checkpoint else None


class ClipScorer:
    """A loaded CLIP model scoring samples against their prompts (one load per evaluation)."""

    def __init__(self, embedder, frames: int = CLIP_FRAMES):
        self.embedder = embedder  # curation.captioning.clip_model.ClipEmbedder, set up
        self.frames = frames
        self._text: dict[str, np.ndarray] = {}  # prompt -> unit text embedding (seeds share a prompt)

    def text_embedding(self, prompt: str) -> np.ndarray:
        if prompt not in self._text:
            self._text[prompt] = self.embedder.embed_texts([prompt])[0]
        return self._text[prompt]

    def score(self, frames: np.ndarray, prompt: str) -> float:
        """cos(text(prompt), mean of the unit image embeddings of up to ``frames`` evenly spaced
        frames). ``embed_frames`` re-normalises that mean, so the dot product is the cosine."""
        video = self.embedder.embed_frames(frames, self.frames)
        return float(np.clip(self.text_embedding(prompt) @ video, -1.0, 1.0))  # rounding may pass |1| by an ulp


def load_clip_scorer(cfg: ClipEvalConfig) -> ClipScorer:
    """Load the configured CLIP model once. Raises ClipEvalError naming the checkpoint when it is
    missing or does not load (rather than a traceback from inside open_clip or torch)."""
    from reelflow.curation.captioning.clip_model import ClipConfig, ClipEmbedder

    where = f"CLIP checkpoint {cfg.checkpoint}"
    if not cfg.model and Path(cfg.checkpoint).is_file():
        raise ClipEvalError(f"{where} is a weights file: name its open_clip architecture "
                            "(--clip-model NAME, or eval.clip_model in a schedule)")
    try:
        embedder = ClipEmbedder(ClipConfig(model=cfg.model or "", checkpoint=cfg.checkpoint,
                                           model_config=cfg.model_config, n_frames=cfg.frames)).setup()
    except FileNotFoundError as e:  # names the missing path (the checkpoint or its model config)
        raise ClipEvalError(f"CLIP score: {e}") from e
    except Exception as e:  # noqa: BLE001 - whatever open_clip or torch raise, the cause is this configuration
        detail = (str(e).strip().splitlines() or [""])[0][:300]
        raise ClipEvalError(f"{where}: could not load it as open_clip model {cfg.model!r}: "
                            f"{type(e).__name__}: {detail}") from e
    return ClipScorer(embedder, cfg.frames)


def check_clip_checkpoint(spec) -> None:
    """Before training: the schedule's ``eval.clip_checkpoint`` (and model config) exist, so a
    mistyped path stops the run now rather than at the first stage's evaluation, after its training."""
    from reelflow.curation.storage import Storage
    from reelflow.training.schedule import ScheduleError

    if not (spec.enabled and spec.clip_checkpoint):
        return
    storage = Storage()
    for field_name in ("clip_checkpoint", "clip_model_config"):
        uri = getattr(spec, field_name)
        if uri and not storage.exists(uri):
            raise ScheduleError(f"eval.{field_name}: not found: {uri}")


@dataclass
class PromptSpec:
    prompt: str
    colour: str | None = None
    shape: str | None = None
    direction: str | None = None
    audio: bool = True  # judge bounce sync and silence when the sample has audio


@dataclass
class EvalResult:
    rows: list[dict]  # one per (prompt, seed)
    summary: dict[str, float | None]
    out_dir: Path | None = None
    files: dict[str, str] = field(default_factory=dict)


def probe_prompts() -> list[PromptSpec]:
    """The bundled shapes probe: every colour x the four axis directions, shapes in turn."""
    out = []
    for i, colour in enumerate(COLOURS):
        for j, direction in enumerate(PROBE_DIRECTIONS):
            shape = SHAPES[(i + j) % len(SHAPES)]
            clip = ShapeClip(colour=colour, shape=shape, direction=direction)
            out.append(PromptSpec(clip.caption, colour, shape, direction))
    return out


def load_prompts(path: str | Path | None) -> list[PromptSpec]:
    """A prompt set from YAML or JSONL; None gives the bundled shapes probe."""
    if path is None:
        return probe_prompts()
    p = Path(path)
    text = p.read_text()
    if p.suffix == ".jsonl":
        raw = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        raw = yaml.safe_load(text)
        if isinstance(raw, dict):
            raw = raw.get("prompts")
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{p}: a prompt set is a non-empty list of prompts")
    specs = []
    for i, item in enumerate(raw):
        item = {"prompt": item} if isinstance(item, str) else dict(item)
        if not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
            raise ValueError(f"{p}: entry {i + 1} has no prompt text")
        unknown = set(item) - {"prompt", "colour", "shape", "direction", "audio"}
        if unknown:
            raise ValueError(f"{p}: entry {i + 1}: unknown keys {sorted(unknown)}")
        parsed = parse_prompt(item["prompt"])
        specs.append(PromptSpec(prompt=item["prompt"], colour=item.get("colour", parsed["colour"]),
                                shape=item.get("shape", parsed["shape"]),
                                direction=item.get("direction", parsed["direction"]),
                                audio=bool(item.get("audio", True))))
    return specs


def read_mp4(path: str | Path) -> tuple[np.ndarray, float, np.ndarray | None, int | None]:
    """Frames (T, H, W, 3) uint8, fps, mono float audio and its rate, from an mp4."""
    import av

    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        fps = float(vs.average_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(vs)])
    audio, rate = None, None
    with av.open(str(path)) as c:
        if c.streams.audio:
            a = c.streams.audio[0]
            rate = a.rate
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks = [o.to_ndarray().reshape(-1) for f in c.decode(a) for o in resampler.resample(f)]
            chunks += [o.to_ndarray().reshape(-1) for o in resampler.resample(None)]
            audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return frames, fps, audio, rate


def score_sample(path: str | Path, spec: PromptSpec, judge_audio: bool = True,
                 scorer: ClipScorer | None = None) -> dict:
    """Measure one generated mp4 against its prompt spec; a row of verdicts and measurements.
    Direction needs motion (3+ frames); sound is judged only when asked and present. With a CLIP
    ``scorer`` the row gets ``clip_score``, from the same decoded frames."""
    frames, fps, audio, rate = read_mp4(path)
    clip = {"clip_score": scorer.score(frames, spec.prompt)} if scorer is not None else {}
    m = measure(frames, fps, audio, rate)
    direction = spec.direction if len(frames) >= 3 else None
    v = judge(m, fps, spec.colour, spec.shape, direction, audio=judge_audio and spec.audio and audio is not None)
    return {**v.to_dict(), "seen_colour": m.colour, "seen_shape": m.shape, "seen_direction": m.direction,
            "bounces": len(m.bounce_frames), "frames": len(frames), "fps": fps, **clip}


def summarize(rows: list[dict], metrics: dict[str, str] | None = None) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, how in (metrics or SUMMARY).items():
        if key in OPTIONAL_METRICS and not any(key in r for r in rows):
            continue  # not configured (e.g. no CLIP checkpoint): absent, not "measured as None"
        vals = [r[key] for r in rows if r.get(key) is not None and not (isinstance(r[key], float) and math.isnan(r[key]))]
        vals = [v for v in vals if math.isfinite(v)] if how == "median" else vals
        out[key] = (float(np.median(vals)) if how == "median" else float(np.mean(vals))) if vals else None
    return out


@torch.no_grad()
def evaluate(checkpoint, prompts: list[PromptSpec] | None = None, seeds: int = 1, out_dir: str | Path | None = None,
             steps: int | None = None, guidance_scale: float | None = None, seconds: float | None = None,
             progress=None, judge_audio: bool = True, clip: ClipEvalConfig | None = None) -> EvalResult:
    """Generate every prompt x seed, save the mp4s under ``out_dir/samples``, measure them. Without
    ``out_dir`` the outputs go to a new temporary directory (``result.out_dir``), never into the
    caller's working directory. With ``clip`` each sample also gets its ``clip_score``."""
    from reelflow.training.checkpoint import GenerationModels, load_checkpoint
    from reelflow.training.generate import generate

    models = checkpoint if isinstance(checkpoint, GenerationModels) else load_checkpoint(checkpoint)
    # Once per evaluation, and before any sampling: a bad CLIP path fails before minutes of generation.
    scorer = load_clip_scorer(clip) if clip is not None else None
    prompts = prompts or probe_prompts()
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="reelflow-eval-"))
    samples = out / "samples"
    rows: list[dict] = []
    total = len(prompts) * seeds
    for i, spec in enumerate(prompts):
        for seed in range(seeds):
            path = samples / f"p{i:03d}_s{seed}.mp4"
            generate(models, spec.prompt, path, seconds=seconds, seed=seed, steps=steps, guidance_scale=guidance_scale)
            rows.append({"prompt_index": i, "prompt": spec.prompt, "seed": seed, "sample": str(path),
                         "want_colour": spec.colour, "want_shape": spec.shape, "want_direction": spec.direction,
                         **score_sample(path, spec, judge_audio, scorer)})
            if progress:
                progress(len(rows), total)
    summary = summarize(rows)
    if judge_audio and models.audio is not None and any(p.audio for p in prompts):
        summary.update(evaluate_soundtrack(models, [p for p in prompts if p.audio], seeds, steps=steps))
    result = EvalResult(rows=rows, summary=summary, out_dir=out)
    result.files = write_outputs(result, prompts)
    return result


def reference_clip(spec: PromptSpec, index: int, seed: int, speed: tuple[float, float] = (0.3, 0.8),
                   size: tuple[float, float] = (0.14, 0.24)) -> ShapeClip:
    """The ground-truth clip a probe prompt describes (colour, shape, direction as asked, red circle
    moving right where it asks nothing), with speed, size and start drawn per (prompt, seed)."""
    rng = np.random.default_rng(1000 * index + seed)
    return ShapeClip(colour=spec.colour or "red", shape=spec.shape or "circle", direction=spec.direction or "right",
                     speed=float(rng.uniform(*speed)), size=float(rng.uniform(*size)),
                     start=(float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7))))


@torch.no_grad()
def evaluate_soundtrack(models, prompts: list[PromptSpec], seeds: int = 1,
                        steps: int | None = None) -> dict[str, float | None]:
    """The audio model as a video-to-audio model: for each prompt and seed, render its ground truth
    at the model's size, rate and length, fast enough (0.5-0.8 frame widths a second) that most clips
    bounce within the frames, generate the audio for that video and the prompt
    (``training.generate.soundtrack``), and measure sync and silence against the rendered bounces
    (training/shape_metrics.py). ``v2a_sync_error_ms`` is the median over clips with a bounce.
    ``steps``: sampler steps, as ``generate`` takes them (default: the audio model's)."""
    from reelflow.training.generate import conditioning_prompt, soundtrack

    models.eval()
    cfg = models.config
    frames_n = cfg.sample.frames or cfg.tae.pixel_frames(3)
    device = next(models.audio.parameters()).device
    rows = []
    for i, spec in enumerate(prompts):
        text, text_mask = models.text([conditioning_prompt(spec.prompt, cfg.sample)])  # once per prompt
        for seed in range(seeds):
            clip = reference_clip(spec, i, seed, speed=(0.5, 0.8), size=(0.2, 0.3))
            truth, _, _ = render_clip(clip, cfg.sample.width, cfg.sample.height, cfg.sample.fps, num_frames=frames_n)
            video = (torch.from_numpy(truth).permute(3, 0, 1, 2)[None].float() / 127.5 - 1).to(device)
            wave = soundtrack(models, video, cfg.sample.fps, text, text_mask, torch.Generator().manual_seed(seed),
                              steps=steps)
            m = measure(truth, cfg.sample.fps, wave, models.audio.cfg.sample_rate)
            v = judge(m, cfg.sample.fps, audio=True)
            rows.append({"v2a_sync_ok": v.sync_ok, "v2a_silence_ok": v.silence_ok, "v2a_sync_error_ms": v.sync_error_ms})
    return summarize(rows, V2A_SUMMARY)


@torch.no_grad()
def tae_round_trip(models, clip: ShapeClip, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(ground truth, TAE encode -> decode) of a rendered clip at the model's sample size, both
    uint8 (T, H, W, 3)."""
    cfg = models.config
    truth, _, _ = render_clip(clip, cfg.sample.width, cfg.sample.height, cfg.sample.fps, num_frames=frames)
    x = torch.from_numpy(truth).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    recon = models.tae.decode(models.tae.encode(x))
    return truth, ((recon[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).numpy()


@torch.no_grad()
def evaluate_tae(checkpoint, prompts: list[PromptSpec] | None = None, seeds: int = 1,
                 out_dir: str | Path | None = None) -> dict[str, float]:
    """Reconstruction of rendered ground truth for each probe prompt: PSNR, SSIM (whole frame) and
    object colour/presence measured on the reconstruction, as for a generated sample. With
    ``out_dir`` the reconstructions are saved (``tae/``) with a contact sheet."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from reelflow.training.checkpoint import GenerationModels, load_checkpoint

    models = checkpoint if isinstance(checkpoint, GenerationModels) else load_checkpoint(checkpoint)
    cfg = models.config
    frames_n = cfg.sample.frames or cfg.tae.pixel_frames(3)
    psnr, ssim, rows, sheet_rows = [], [], [], []
    # The first frame is encoded on its own (causal padding); the later ones share latent frames of
    # r = temporal_compression pixel frames. A TAE can keep the first and lose the rest (measured
    # 2026-12-07 on the demo's TAE: object colour error 44 on frame 0, 94 on frames 1-8), so the
    # PSNR of each part is reported apart: the whole-clip mean hides it.
    psnr_first, psnr_later = [], []
    for i, spec in enumerate(prompts or probe_prompts()):
        for seed in range(seeds):
            clip = reference_clip(spec, i, seed)
            truth, rec = tae_round_trip(models, clip, frames_n)
            with np.errstate(divide="ignore"):  # an exact reconstruction is +inf dB, not an error
                psnr.append(peak_signal_noise_ratio(truth, rec, data_range=255))
                psnr_first.append(peak_signal_noise_ratio(truth[:1], rec[:1], data_range=255))
                if frames_n > 1:
                    psnr_later.append(peak_signal_noise_ratio(truth[1:], rec[1:], data_range=255))
            ssim.append(float(np.mean([structural_similarity(a, b, channel_axis=-1, data_range=255)
                                       for a, b in zip(truth, rec)])))
            m = measure(rec, cfg.sample.fps)
            # motion must survive too: the reconstruction moves the way the ground truth is measured to
            # move (its own first frames; a bounce there can flip the rendered direction)
            seen = measure(truth, cfg.sample.fps).direction if frames_n > 1 else None
            v = judge(m, cfg.sample.fps, colour=clip.colour, shape=clip.shape, direction=seen)
            rows.append(v)
            if out_dir is not None:
                from reelflow.training.generate import write_mp4

                path = write_mp4(Path(out_dir) / "tae" / f"p{i:03d}_s{seed}.mp4", rec, cfg.sample.fps)
                sheet_rows.append({"prompt": f"reconstruction of: {spec.prompt}", "seed": seed, "sample": str(path),
                                   **v.to_dict(), "seen_colour": m.colour, "seen_shape": m.shape,
                                   "seen_direction": m.direction, "bounces": len(m.bounce_frames)})
    if out_dir is not None:
        contact_sheet(sheet_rows, Path(out_dir) / "tae_contact_sheet.png")
    return {"tae_psnr": float(np.mean(psnr)), "tae_psnr_first_frame": float(np.mean(psnr_first)),
            "tae_psnr_later_frames": _mean_or_none(psnr_later), "tae_ssim": float(np.mean(ssim)),
            "tae_object_present": float(np.mean([r.present for r in rows])),
            "tae_object_colour": float(np.mean([r.colour for r in rows])),
            "tae_object_shape": float(np.mean([r.shape for r in rows])),
            "tae_object_direction": _mean_or_none([r.direction for r in rows])}


def _mean_or_none(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def write_outputs(result: EvalResult, prompts: list[PromptSpec]) -> dict[str, str]:
    """metrics.parquet (one row per sample), summary.json and contact_sheet.png under out_dir."""
    import pandas as pd

    out = result.out_dir
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(result.rows).to_parquet(out / "metrics.parquet", index=False)
    (out / "summary.json").write_text(json.dumps(result.summary, indent=1))
    sheet = contact_sheet(result.rows, out / "contact_sheet.png")
    return {"metrics": str(out / "metrics.parquet"), "summary": str(out / "summary.json"), "contact_sheet": str(sheet)}


def contact_sheet(rows: list[dict], path: Path, max_rows: int = 32, strip_frames: int = 6, scale: int = 2) -> Path:
    """One line per sample: a strip of its frames, then its prompt and the measured verdict."""
    from PIL import Image, ImageDraw

    lines = []
    for r in rows[:max_rows]:
        frames, _, _, _ = read_mp4(r["sample"])
        idx = np.linspace(0, len(frames) - 1, min(strip_frames, len(frames))).round().astype(int)
        strip = np.concatenate([frames[i] for i in idx], axis=1)
        img = Image.fromarray(strip).resize((strip.shape[1] * scale, strip.shape[0] * scale), Image.NEAREST)
        lines.append((img, r))
    if not lines:
        Image.new("RGB", (400, 40), "white").save(path)
        return path
    text_w, pad = 520, 4
    width = max(img.width for img, _ in lines) + text_w + 3 * pad
    height = sum(img.height + pad for img, _ in lines) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = pad
    for img, r in lines:
        sheet.paste(img, (pad, y))
        x = img.width + 2 * pad
        prompt = r["prompt"] if len(r["prompt"]) <= 80 else r["prompt"][:77] + "..."
        draw.text((x, y + 2), f"seed {r['seed']}: {prompt}", fill=(0, 0, 0))
        ok = lambda v: "-" if v is None else ("ok" if v >= 1 else "NO")  # noqa: E731
        verdict = (f"present {ok(r['present'])}  colour {ok(r['colour'])} (saw {r['seen_colour']})  "
                   f"shape {ok(r['shape'])} (saw {r['seen_shape']})  direction {ok(r['direction'])} (saw {r['seen_direction']})")
        draw.text((x, y + 18), verdict, fill=(0, 110, 0) if r["present"] and r.get("colour") else (170, 20, 20))
        sync = r.get("sync_error_ms")
        draw.text((x, y + 34), f"bounces {r['bounces']}  sync {'-' if sync is None else f'{sync:.0f} ms'}  "
                               f"silence {ok(r.get('silence_ok'))}", fill=(60, 60, 60))
        y += img.height + pad
    sheet.save(path)
    return path


def evaluate_stage(checkpoint: str | Path, model_kind: str, spec, out_dir: str | Path) -> dict[str, float | None]:
    """The evaluation after a training stage (``spec``: the schedule's EvalSpec): a TAE stage is
    measured on reconstructions of the probe's ground truth; a generator stage on its samples
    (sound judged once the audio model has trained). Later stages keep the TAE frozen, so its
    figures are not measured again. Writes out_dir/{summary.json, and metrics.parquet,
    contact_sheet.png, samples/ or tae_contact_sheet.png, tae/}; returns the summary."""
    from reelflow.training.checkpoint import load_checkpoint

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = load_checkpoint(checkpoint)
    prompts = load_prompts(spec.prompts)[: spec.max_prompts]
    if model_kind == "tae":
        summary: dict[str, float | None] = dict(evaluate_tae(models, prompts, out_dir=out))
    else:
        result = evaluate(models, prompts, seeds=spec.seeds, out_dir=out, steps=spec.steps,
                          judge_audio=model_kind == "audio", clip=ClipEvalConfig.from_spec(spec))
        summary = dict(result.summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
