"""Camera-motion label of a clip from its global optical flow (no learned weights).

Movie Gen prefixes a caption with the label of a 16-class camera-motion classifier when that label
is confident (pan, tilt, zoom, static, ...). This module reads the dense Farneback flow that the
motion scorer already computes (``curation.scoring.motion.pair_flows``) and fits one global motion
model per analysis frame pair, robustly (trimmed least squares, so moving subjects drop out)::

    u(x, y) = tx + s·x − r·y        (x, y: pixel position relative to the frame centre, y down)
    v(x, y) = ty + s·y + r·x        (u, v: the flow, in pixels from frame i to frame i + 1)

``tx, ty`` is the global translation, ``s`` the isotropic divergence (fractional scale change per
frame) and ``r`` a small in-plane rotation (fitted so that a roll does not leak into the others).

Conventions (image coordinates: +x right, +y **down**; the flow is *content* motion):

* camera pans right  ⇒ content moves left  ⇒ ``tx < 0`` ⇒ ``pan_right``; pans left ⇒ ``tx > 0``
* camera tilts up    ⇒ content moves down  ⇒ ``ty > 0`` ⇒ ``tilt_up``;  tilts down ⇒ ``ty < 0``
* zoom in            ⇒ flow diverges outward ⇒ ``s > 0`` ⇒ ``zoom_in``; zoom out ⇒ ``s < 0``
* ``rotation_rate > 0`` is content turning clockwise on screen (a roll is not a label: ``none``)

Units (shared with ``motion_mean`` in ``curation.scoring.motion``): displacements are reported in
**pixels per 1/8 s at a 256-px short side** ("px/tick@256") — with the default analysis decode
(``short_side=256, fps=8``) that is exactly pixels per analysis frame; other sizes and rates are
rescaled linearly. ``zoom_rate`` is the fractional scale change per tick (0.02 = the picture grows
2 % every 1/8 s); ``zoom_px`` is that growth as displacement at the edge of the short side
(``zoom_rate · 128``), which makes zoom comparable with translation.

Labels: ``static``, ``pan_left``, ``pan_right``, ``tilt_up``, ``tilt_down``, ``zoom_in``,
``zoom_out``, ``shaky`` (large global motion that keeps changing direction) and ``none`` (no
label is confident: mixed or diagonal motion, a roll, only subject motion, too few frames).
``confidence`` is in [0, 1]. Pan/tilt/zoom: the share of frame pairs whose own dominant component
is the label's × how much that component dominates the runner-up (1 − second/first) × how far it
clears ``move_min`` (0 at the threshold, 1 at twice it). Static: the share of still pairs × how far
the median flow stays under ``static_max``. Shaky: how far the jitter clears ``shake_min`` × how
little of it is steady motion (1 − steady/jitter). A label whose
confidence is below ``CameraMotionConfig.min_confidence`` is reported as ``none`` (the fitted
``raw_label`` is kept), so a caption prefix can be taken from ``label`` as is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from reelflow.curation.scoring.frames import AnalysisClip
    from reelflow.curation.scoring.motion import MotionConfig

REFERENCE_SHORT_SIDE = 256  # px: displacements are reported as if frames had this short side
REFERENCE_FPS = 8.0  # Hz: displacements are reported per 1/8 s (the default analysis rate)
ZOOM_RADIUS = REFERENCE_SHORT_SIDE / 2  # px@256: zoom_px = zoom_rate x this (edge of the short side)

CAMERA_LABELS = ("static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out",
                 "shaky", "none")


@dataclass(frozen=True)
class CameraMotionConfig:
    # -- global fit --------------------------------------------------------------------------
    margin: float = 0.08  # fraction of each side left out: picture entering at an edge has no match
    grid_step: int = 4  # px: fit on every 4th pixel; Farneback flow is smooth at that scale
    trim_keep: float = 0.7  # refit on the 70 % best-fitting points, so moving subjects drop out
    fit_iterations: int = 3  # trimmed refits per pair
    min_texture: float = 8.0  # Sobel |grad| (levels/px); flat areas read ~0 flow (used when gray is given)
    # -- thresholds, px/tick@256 ---------------------------------------------------------------
    static_max: float = 0.3  # median |flow| below this: a still camera (compression noise is ~0.05)
    move_min: float = 0.6  # the dominant pan/tilt/zoom component must reach this (full ramp at 2x)
    shake_min: float = 1.5  # rms change of per-pair translation around its mean that reads as shake
    shake_ratio: float = 1.0  # shake also needs jitter > ratio x the steady global motion
    # -- output ------------------------------------------------------------------------------
    min_confidence: float = 0.5  # below this the label is reported as "none" (Movie Gen: confident only)


@dataclass(frozen=True)
class CameraMotion:
    label: str  # one of CAMERA_LABELS; "none" when raw_label's confidence < min_confidence
    confidence: float  # [0, 1], of raw_label
    raw_label: str  # the best-fitting label before the confidence cut
    translation_x: float  # px/tick@256, mean global content motion, +right (pan right reads negative)
    translation_y: float  # px/tick@256, +down (tilt up reads positive)
    zoom_rate: float  # fractional scale change per tick, + = zoom in
    rotation_rate: float  # rad/tick, + = content turns clockwise on screen
    motion_median: float  # px/tick@256, median over pairs of the median |flow|
    jitter: float  # px/tick@256, rms of per-pair translation around its mean
    n_pairs: int  # frame pairs the label was fitted on

    @property
    def zoom_px(self) -> float:
        """Zoom as displacement at the edge of the short side, px/tick@256."""
        return self.zoom_rate * ZOOM_RADIUS

    def as_record(self) -> dict[str, float | str]:
        """Flat ``camera_*`` columns for a clip record."""
        d = asdict(self)
        return {f"camera_{k}": (v if isinstance(v, str) else float(v)) for k, v in d.items()}


@dataclass(frozen=True)
class _PairFit:
    tx: float  # analysis px / analysis frame
    ty: float
    s: float  # 1 / analysis frame
    r: float  # rad / analysis frame
    median_mag: float  # analysis px / analysis frame


def _grid(h: int, w: int, cfg: CameraMotionConfig) -> tuple[np.ndarray, np.ndarray]:
    my, mx = int(round(h * cfg.margin)), int(round(w * cfg.margin))
    ys = np.arange(my, h - my, cfg.grid_step)
    xs = np.arange(mx, w - mx, cfg.grid_step)
    return np.meshgrid(ys, xs, indexing="ij")


def fit_global_motion(flow: np.ndarray, cfg: CameraMotionConfig = CameraMotionConfig(),
                      texture: np.ndarray | None = None) -> tuple[float, float, float, float]:
    """Trimmed least-squares fit of ``(tx, ty, s, r)`` to one (H, W, 2) flow field, in analysis
    pixels (and 1/frame, rad/frame) about the frame centre. ``texture`` is an optional (H, W)
    boolean mask of points whose flow is trustworthy."""
    h, w = flow.shape[:2]
    gy, gx = _grid(h, w, cfg)
    u = flow[gy, gx, 0].ravel().astype(np.float64)
    v = flow[gy, gx, 1].ravel().astype(np.float64)
    x = (gx.ravel() - (w - 1) / 2.0).astype(np.float64)
    y = (gy.ravel() - (h - 1) / 2.0).astype(np.float64)
    if texture is not None:
        keep = texture[gy, gx].ravel()
        if keep.sum() >= 64:  # too few textured points: fall back to every point
            u, v, x, y = u[keep], v[keep], x[keep], y[keep]
    n = len(u)
    ones, zeros = np.ones(n), np.zeros(n)
    # rows for u: [1, 0, x, -y]; rows for v: [0, 1, y, x]
    a_all = np.concatenate([np.stack([ones, zeros, x, -y], 1), np.stack([zeros, ones, y, x], 1)])
    b_all = np.concatenate([u, v])
    idx = np.arange(n)
    p = np.zeros(4)
    for it in range(max(1, cfg.fit_iterations)):
        a = np.concatenate([a_all[idx], a_all[idx + n]])
        b = np.concatenate([b_all[idx], b_all[idx + n]])
        p = np.linalg.lstsq(a, b, rcond=None)[0]
        if it + 1 < cfg.fit_iterations:
            res = np.hypot(a_all[:n] @ p - u, a_all[n:] @ p - v)
            idx = np.flatnonzero(res <= np.quantile(res, cfg.trim_keep))
    return float(p[0]), float(p[1]), float(p[2]), float(p[3])


def _texture_mask(gray: np.ndarray, min_texture: float) -> np.ndarray:
    g = gray.astype(np.float32)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3) / 8.0  # /8: Sobel's 3x3 gain, so levels per pixel
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    return np.hypot(gx, gy) >= min_texture


def _ramp(value: float, threshold: float) -> float:
    """0 at ``threshold``, 1 at twice it: how clearly a magnitude clears its threshold."""
    return float(np.clip(value / threshold - 1.0, 0.0, 1.0)) if threshold > 0 else 1.0


def _directional(tx: float, ty: float, zpx: float, rpx: float) -> tuple[str, float, float]:
    """The dominant component's label, its magnitude and the runner-up's magnitude."""
    comps = [
        ("pan_left" if tx > 0 else "pan_right", abs(tx)),
        ("tilt_up" if ty > 0 else "tilt_down", abs(ty)),
        ("zoom_in" if zpx > 0 else "zoom_out", abs(zpx)),
        ("none", abs(rpx)),  # a roll is no label; fitted so it does not pass for a pan or zoom
    ]
    comps.sort(key=lambda c: c[1], reverse=True)
    return comps[0][0], comps[0][1], comps[1][1]


def classify_camera_motion(
    flows: np.ndarray,
    fps: float = REFERENCE_FPS,
    gray: np.ndarray | None = None,
    pairs: np.ndarray | None = None,
    cfg: CameraMotionConfig = CameraMotionConfig(),
) -> CameraMotion:
    """Camera-motion label of a clip from ``flows`` (P, H, W, 2) float32, as returned by
    ``pair_flows(gray, motion_cfg)[1]`` (per-pixel content displacement between consecutive
    analysis frames, in analysis pixels). ``fps`` is the rate the frames were sampled at (use
    ``curation.scoring.motion.effective_fps(clip)``); ``gray`` (T, H, W) and ``pairs`` (the pair
    indices ``pair_flows`` returned) let the fit skip flat, textureless areas."""
    p = int(flows.shape[0]) if flows.ndim == 4 else 0
    if p == 0:  # a single frame: no motion can be measured
        return CameraMotion("none", 0.0, "none", 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
    h, w = flows.shape[1:3]
    if pairs is None:
        pairs = np.arange(p)
    fits: list[_PairFit] = []
    for k in range(p):
        tex = None
        if gray is not None:
            tex = _texture_mask(gray[int(pairs[k])], cfg.min_texture)
        tx, ty, s, r = fit_global_motion(flows[k], cfg, tex)
        gy, gx = _grid(h, w, cfg)
        mag = float(np.median(np.hypot(flows[k, gy, gx, 0], flows[k, gy, gx, 1])))
        fits.append(_PairFit(tx, ty, s, r, mag))

    # analysis px/frame -> px/tick@256; 1/frame -> 1/tick
    tick = fps / REFERENCE_FPS
    px = (REFERENCE_SHORT_SIDE / min(h, w)) * tick
    t = np.array([[f.tx, f.ty] for f in fits]) * px
    zoom = np.array([f.s for f in fits]) * tick
    rot = np.array([f.r for f in fits]) * tick
    mags = np.array([f.median_mag for f in fits]) * px

    mean_t = t.mean(axis=0)
    zoom_rate, rotation_rate = float(zoom.mean()), float(rot.mean())
    motion_median = float(np.median(mags))
    jitter = float(np.sqrt(np.mean(np.sum((t - mean_t) ** 2, axis=1))))
    steady = max(float(np.hypot(*mean_t)), abs(zoom_rate) * ZOOM_RADIUS)

    if motion_median < cfg.static_max:
        raw = "static"
        agree = float(np.mean(mags < cfg.static_max))
        conf = agree * float(np.clip(2.0 * (1.0 - motion_median / cfg.static_max), 0.0, 1.0))
    elif jitter >= cfg.shake_min and jitter > cfg.shake_ratio * steady:
        raw = "shaky"
        conf = _ramp(jitter, cfg.shake_min) * float(np.clip(1.0 - steady / jitter, 0.0, 1.0))
    else:
        raw, dom, second = _directional(mean_t[0], mean_t[1], zoom_rate * ZOOM_RADIUS,
                                        rotation_rate * ZOOM_RADIUS)
        if raw == "none" or dom < cfg.move_min:
            raw, conf = "none", 0.0
        else:
            per_pair = [_directional(t[k, 0], t[k, 1], zoom[k] * ZOOM_RADIUS, rot[k] * ZOOM_RADIUS)[0]
                        for k in range(p)]
            agree = float(np.mean([lab == raw for lab in per_pair]))
            conf = agree * (1.0 - second / dom) * _ramp(dom, cfg.move_min)
    conf = float(np.clip(conf, 0.0, 1.0))
    label = raw if conf >= cfg.min_confidence else "none"
    return CameraMotion(
        label=label, confidence=conf, raw_label=raw,
        translation_x=float(mean_t[0]), translation_y=float(mean_t[1]),
        zoom_rate=zoom_rate, rotation_rate=rotation_rate,
        motion_median=motion_median, jitter=jitter, n_pairs=p,
    )


def camera_motion(clip: AnalysisClip, cfg: CameraMotionConfig = CameraMotionConfig(),
                  motion_cfg: MotionConfig | None = None, flows: np.ndarray | None = None,
                  pairs: np.ndarray | None = None) -> CameraMotion:
    """Camera-motion label of an ``AnalysisClip``; pass ``flows``/``pairs`` from ``pair_flows`` when
    the motion scorer already computed them (flow is the costly part)."""
    from reelflow.curation.scoring.motion import MotionConfig, effective_fps, flow_pairs, pair_flows

    gray = clip.gray
    motion_cfg = motion_cfg or MotionConfig()
    if flows is None:
        pairs, flows = pair_flows(gray, motion_cfg)
    elif pairs is None:  # the pairs pair_flows sampled with this config, if the count matches
        pairs = flow_pairs(gray.shape[0], motion_cfg.max_flow_pairs)
        if len(pairs) != len(flows):
            pairs, gray = None, None  # unknown frames: fit without the texture mask
    return classify_camera_motion(flows, effective_fps(clip), gray, pairs, cfg)
