"""Does a sample show what its prompt asked for? Metrics from the pixels and the audio alone.

The synthetic-shapes world (training/synthetic_shapes.py) is simple enough to measure exactly:
one coloured shape on black, moving in a stated direction, clicking at each bounce. Each metric
below is computed from a generated clip (uint8 frames, mono audio) and an expectation (colour,
shape, direction); nothing reads the model. A clip that shows nothing fails every metric.

Definitions (each next to its code):
- object present: in at least ``PRESENT_FRAMES`` of the frames, one bright blob (the largest
  connected component of pixels brighter than ``BRIGHT``) covers ``MIN_AREA``..``MAX_AREA`` of the
  frame and nearly everything else is dark (a frame of noise is not "an object").
- colour: the mean RGB of the blob's pixels over all frames, nearest of the palette (or black).
- shape: the blob's fill ratio of its bounding box (square 1.0, circle pi/4, triangle 1/2), the
  median over frames where the blob does not touch the border; nearest of the three.
- direction: the centroid's displacement over the first frames (before any bounce can flip it),
  nearest of the 8 directions by angle.
- bounce sync: visual bounces are the peaks of the centroid's x or y track (motion reverses)
  with the object at the wall it reverses from (its edge within one frame's travel plus
  ``WALL_SLACK`` px of that wall: the world's objects bounce off the walls, so a wobble of a drawn
  object in mid-frame is not a bounce), timed to a fraction of a frame from the triangle the
  bounce leaves (``_reversals``); audio onsets are where the short-time energy rises above a
  threshold, 10 dB over the 20 ms before it (a sound starting, not noise wandering). The clip's
  error is symmetric: the median over each visual bounce's distance (ms) to the nearest onset (the
  clip's length when it has none) and each onset's (where a bounce could be seen) to the nearest
  bounce. Nearest-onset alone let noise pass: its onsets are everywhere, and an untrained audio
  model scored a 79 ms median error on 48 probe clips (176 ms now; the demo's trained one 56 ms).
- silence: the share of the *audible* audio energy (5 ms hops above ``AUDIBLE_ENERGY``, the floor
  below which an onset is not a sound either) that lies more than a frame from every visual bounce
  (where a bounce could be seen at all); the clip is silent where nothing bounces when that share
  is below ``SILENCE_MAX_SHARE``. Hiss below the floor (-40 dBFS) is silence.
- Sound is judged only for a present object: a sample without one fails sync and silence (and has
  no sync error), as it fails every other metric it was asked for.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from reelflow.training.synthetic_shapes import COLOURS, DIRECTIONS, SHAPES

BRIGHT = 60  # max channel value that counts as "lit" (background is black, 0)
MIN_AREA, MAX_AREA = 0.002, 0.35  # blob area as a fraction of the frame
MAX_STRAY = 0.02  # lit pixels outside the blob, as a fraction of the frame
PRESENT_FRAMES = 0.8
FILL_RATIO = {"square": 1.0, "circle": math.pi / 4, "triangle": 0.5}
PALETTE = {**COLOURS, "black": (0, 0, 0)}
SILENCE_MAX_SHARE = 0.2
AUDIBLE_ENERGY = 1e-4  # mean square of a 5 ms hop (RMS 0.01, -40 dBFS): quieter is not a sound
ONSET_JUMP = 10.0  # an onset's energy over the mean of the hops just before it (+10 dB): a sound starting
ONSET_CONTEXT_S = 0.02  # ... over these seconds
WALL_SLACK = 2.0  # px beyond one frame's travel that an object bouncing off a wall may be from it


@dataclass
class ShapeMeasure:
    """What one clip shows, measured."""

    present: bool
    present_frames: float  # share of frames with an object
    colour: str | None
    shape: str | None
    direction: str | None
    bounce_frames: list[float]  # when the motion reverses, in frames (sub-frame)
    sync_error_ms: float | None  # median distance of a visual bounce to the nearest audio onset
    stray_audio_share: float | None  # audio energy away from every visual bounce


@dataclass
class Verdict:
    """A measured clip against its expectation: 1.0 right, 0.0 wrong, None not asked/applicable."""

    present: float
    colour: float | None
    shape: float | None
    direction: float | None
    sync_error_ms: float | None
    sync_ok: float | None  # error <= one video frame
    silence_ok: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def blobs(frames: np.ndarray) -> list[np.ndarray | None]:
    """Per frame: the object's mask, or None when the frame shows no single object."""
    t, h, w, _ = frames.shape
    lit = frames.max(axis=-1) > BRIGHT
    out: list[np.ndarray | None] = []
    for i in range(t):
        labels, n = ndimage.label(lit[i])
        if n == 0:
            out.append(None)
            continue
        sizes = np.bincount(labels.ravel())[1:]
        k = int(sizes.argmax()) + 1
        area = sizes[k - 1] / (h * w)
        stray = (lit[i].sum() - sizes[k - 1]) / (h * w)
        out.append(labels == k if MIN_AREA <= area <= MAX_AREA and stray <= MAX_STRAY else None)
    return out


def nearest(value: np.ndarray, options: dict[str, tuple]) -> str:
    return min(options, key=lambda k: float(np.sum((np.asarray(options[k], float) - value) ** 2)))


def direction_of(dx: float, dy: float) -> str | None:
    """The nearest of the 8 named directions by angle (image coordinates, y down)."""
    if math.hypot(dx, dy) < 1e-6:
        return None
    return max(DIRECTIONS, key=lambda k: (DIRECTIONS[k][0] * dx + DIRECTIONS[k][1] * dy) / math.hypot(*DIRECTIONS[k]))


def audio_onsets(audio: np.ndarray, sample_rate: int, hop_s: float = 0.005) -> list[float]:
    """Times (s) where a sound starts: the short-time energy rises through 10% of its peak (and
    ``AUDIBLE_ENERGY``) with a jump of ``ONSET_JUMP`` x over the mean of the ``ONSET_CONTEXT_S`` before
    it. The jump makes an onset an event: in noise the energy wanders across any level, and
    long stretches above it hid the bursts within them (an untrained audio model's error: 134 ms
    without the jump, 176 ms with it; a trained one's 83 and 56 ms)."""
    if audio is None or audio.size == 0:
        return []
    hop = max(1, int(hop_s * sample_rate))
    n = audio.size // hop
    if n < 2:
        return []
    energy = (audio[: n * hop].reshape(n, hop).astype(np.float64) ** 2).mean(axis=1)
    thr = max(0.1 * energy.max(), AUDIBLE_ENERGY)
    k = max(1, round(ONSET_CONTEXT_S / hop_s))
    before = np.convolve(np.concatenate([np.zeros(k), energy]), np.ones(k) / k, mode="valid")[:n]  # mean of the k hops before
    above = (energy > thr) & (energy > ONSET_JUMP * before)
    starts = np.flatnonzero(above[1:] & ~above[:-1]) + 1
    if above[0]:
        starts = np.concatenate([[0], starts])
    onsets, last = [], -1.0
    for s in starts:
        t = s * hop / sample_rate
        if t - last > 0.05:  # one click, one onset (its decay may cross the threshold again)
            onsets.append(t)
            last = t
    return onsets


def measure(frames: np.ndarray, fps: float, audio: np.ndarray | None = None, sample_rate: int | None = None) -> ShapeMeasure:
    """Measure one clip: frames (T, H, W, 3) uint8; audio (N,) float in [-1, 1] or None."""
    masks = blobs(frames)
    t = len(masks)
    present_frames = sum(m is not None for m in masks) / max(t, 1)
    present = present_frames >= PRESENT_FRAMES
    if not any(m is not None for m in masks):
        return ShapeMeasure(False, present_frames, None, None, None, [], None, None)
    pixels = np.concatenate([frames[i][m] for i, m in enumerate(masks) if m is not None]).astype(float)
    colour = nearest(pixels.mean(axis=0), PALETTE)
    h, w = frames.shape[1:3]
    fills = []
    centroids: list[tuple[float, float] | None] = []
    extents: list[tuple[tuple[int, int], tuple[int, int]] | None] = []  # per frame: (x0, x1), (y0, y1)
    for m in masks:
        if m is None:
            centroids.append(None)
            extents.append(None)
            continue
        ys, xs = np.nonzero(m)
        centroids.append((float(xs.mean()), float(ys.mean())))
        extents.append(((int(xs.min()), int(xs.max())), (int(ys.min()), int(ys.max()))))
        if ys.min() > 0 and xs.min() > 0 and ys.max() < h - 1 and xs.max() < w - 1:
            box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
            fills.append(len(ys) / box)
    shape = min(FILL_RATIO, key=lambda k: abs(FILL_RATIO[k] - float(np.median(fills)))) if fills else None
    # Direction: the first frames' displacement (the earliest frames in which the object shows).
    track = [(i, c) for i, c in enumerate(centroids) if c is not None]
    direction = None
    if len(track) >= 2:
        (_, c0), (_, c1) = track[0], track[min(2, len(track) - 1)]
        direction = direction_of(c1[0] - c0[0], c1[1] - c0[1])
    bounce_frames = _reversals(centroids, extents=extents, size=(w, h))
    sync, stray = None, None
    if audio is not None and sample_rate:
        onsets = audio_onsets(audio, sample_rate)
        bounce_s = [b / fps for b in bounce_frames]
        if bounce_s:
            # a bounce with no onset anywhere in the clip misses by the clip's length: finite, so a
            # median over clips counts it (an infinite error was dropped from the median as "unmeasured")
            errs = [min((abs(o - b) for o in onsets), default=t / fps) for b in bounce_s]
            # ... and every onset where a bounce could be seen misses its nearest bounce: sound all
            # over the clip (noise, or a click on every frame) is not in sync with one bounce
            errs += [min(abs(o - b) for b in bounce_s) for o in onsets if 1 / fps <= o <= (t - 1) / fps]
            sync = float(np.median(errs)) * 1000
        stray = _stray_share(audio, sample_rate, bounce_s, 1.0 / fps, t)
    return ShapeMeasure(present, present_frames, colour, shape, direction, bounce_frames, sync, stray)


def _reversals(centroids: list[tuple[float, float] | None], min_speed: float = 1.0,
               extents: list | None = None, size: tuple[int, int] | None = None) -> list[float]:
    """Bounce times, in frames (sub-frame), where the x or y position peaks (motion reverses).

    At constant speed s a bounce at time e + f between frames leaves a triangle in the position
    track whose peak is recovered from the peak frame e and its neighbours:
    f = +-(x[e+1] - x[e-1]) / (2 s) (+ for a maximum, - for a minimum). Peaks of a track moving
    slower than ``min_speed`` px per frame (jitter of a still blob) are ignored. With the blobs'
    ``extents`` and the frame ``size`` (w, h), a peak counts only with the object at the wall it
    turns from: at a maximum its far edge, at a minimum its near edge, within s + ``WALL_SLACK``
    px of the frame's edge (the object is at most one frame's travel from the wall it hit)."""
    n = len(centroids)
    times: list[float] = []
    flat = 0.3  # px: steps smaller than this are a plateau (the object at the wall for two frames)
    for k in (0, 1):
        x = [c[k] if c is not None else None for c in centroids]
        e = 1
        while e < n - 1:
            j = e  # the peak may be a plateau e..j
            while j + 1 < n and x[j + 1] is not None and x[e] is not None and abs(x[j + 1] - x[e]) < flat:
                j += 1
            if x[e - 1] is None or x[e] is None or j + 1 >= n or x[j + 1] is None:
                e = j + 1
                continue
            d_prev, d_next = x[e] - x[e - 1], x[j + 1] - x[j]
            if abs(d_prev) >= flat and abs(d_next) >= flat and d_prev * d_next < 0:
                before = x[e - 1] - x[e - 2] if e >= 2 and x[e - 2] is not None else d_prev
                after = x[j + 2] - x[j + 1] if j + 2 < n and x[j + 2] is not None else d_next
                speed = (abs(before) + abs(after)) / 2
                sign = 1.0 if d_prev > 0 else -1.0  # a maximum or a minimum
                if speed >= min_speed and _at_wall(extents, size, k, e, j, sign, speed):
                    frac = sign * (x[j + 1] - x[e - 1]) / (2 * speed)
                    times.append((e + j) / 2 + min(max(frac, -1.0), 1.0))
            e = j + 1
    merged: list[float] = []
    for t in sorted(times):  # a corner hit reverses x and y at once: one bounce
        if not merged or t - merged[-1] > 0.5:
            merged.append(t)
    return merged


def _at_wall(extents: list | None, size: tuple[int, int] | None, axis: int, e: int, j: int, sign: float,
             speed: float) -> bool:
    """Whether the object touches (within ``speed`` + ``WALL_SLACK`` px) the wall a peak at frames
    e..j on ``axis`` turns from; True when extents are not given (a bare centroid track)."""
    if extents is None or size is None:
        return True
    margin = speed + WALL_SLACK
    for i in range(e, j + 1):
        if extents[i] is None:
            continue
        lo, hi = extents[i][axis]
        if (sign > 0 and hi >= size[axis] - 1 - margin) or (sign < 0 and lo <= margin):
            return True
    return False


def _stray_share(audio: np.ndarray, sample_rate: int, bounce_s: list[float], frame_s: float, frames: int) -> float:
    """Share of the audible energy (hops above ``AUDIBLE_ENERGY``) more than one frame away from
    every visual bounce, over the span where a bounce can be seen (a reversal needs a frame on each
    side). 0 when nothing in the span is audible."""
    lo_s, hi_s = frame_s, (frames - 2) * frame_s
    span = audio[int(lo_s * sample_rate): int(hi_s * sample_rate)].astype(np.float64)
    hop = max(1, int(0.005 * sample_rate))
    n = span.size // hop * hop
    loud = np.repeat((span[:n].reshape(-1, hop) ** 2).mean(axis=1) > AUDIBLE_ENERGY, hop)
    energy = np.zeros(span.size)
    energy[:n] = np.where(loud, span[:n] ** 2, 0.0)  # only what can be heard counts as sound
    total = energy.sum()
    if total <= 1e-8:
        return 0.0
    near = np.zeros(span.size, dtype=bool)
    for b in bounce_s:
        lo, hi = int((b - frame_s - lo_s) * sample_rate), int((b + frame_s - lo_s + 0.06) * sample_rate)
        near[max(0, lo):max(0, min(span.size, hi))] = True  # + the 60 ms a click rings for
    return float(energy[~near].sum() / total)


def judge(m: ShapeMeasure, fps: float, colour: str | None = None, shape: str | None = None,
          direction: str | None = None, audio: bool = False) -> Verdict:
    """Score a measurement against what the prompt asked for. An absent object fails everything asked."""
    def hit(got, want):
        return None if want is None else float(m.present and got == want)

    sync_ok = silence_ok = sync_error = None
    if audio and not m.present:  # sound is asked: without the object there is nothing to sync to
        sync_ok = silence_ok = 0.0
    elif audio:
        sync_error = m.sync_error_ms
        sync_ok = float(sync_error is not None and sync_error <= 1000.0 / fps + 1e-6) if m.bounce_frames else None
        silence_ok = float(m.stray_audio_share is not None and m.stray_audio_share <= SILENCE_MAX_SHARE)
    return Verdict(present=float(m.present), colour=hit(m.colour, colour), shape=hit(m.shape, shape),
                   direction=hit(m.direction, direction), sync_error_ms=sync_error,
                   sync_ok=sync_ok, silence_ok=silence_ok)


def parse_prompt(prompt: str) -> dict:
    """colour / shape / direction named in a shapes caption (longest direction phrase first)."""
    low = prompt.lower()
    colour = next((c for c in COLOURS if f" {c} " in f" {low} "), None)
    shape = next((s for s in SHAPES if s in low), None)
    direction = next((d for d in sorted(DIRECTIONS, key=len, reverse=True) if f"moves {d}" in low), None)
    return {"colour": colour, "shape": shape, "direction": direction}
