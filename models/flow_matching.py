"""Flow matching as in Movie Gen: path, training loss, guidance and the Euler sampler.

Convention (Movie Gen): t = 0 is noise x0 ~ N(0, I), t = 1 is data x1.
    x_t = t·x1 + (1 - (1 - σ_min)·t)·x0,   target velocity u = x1 - (1 - σ_min)·x0
Training samples t from a logit-normal distribution (mean 0, std 1), which concentrates
steps in the middle of the path where the velocity is hardest to predict.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class FlowMatchingConfig:
    sigma_min: float = 1e-5  # Movie Gen
    logit_normal_mean: float = 0.0  # Movie Gen
    logit_normal_std: float = 1.0  # Movie Gen
    # resolution-dependent shift (as in SD3): shift = sqrt(tokens / base_tokens), at least 1.
    # base 256 tokens = a 256 px image through an 8x TAE and 2x2 patches (Movie Gen stage 1).
    shift_base_tokens: int = 256
    use_resolution_shift: bool = True
    guidance_scale: float = 7.5  # Movie Gen (video)
    num_steps: int = 50  # Movie Gen
    linear_reference_steps: int = 1000  # linear-quadratic: first half mimics a 1000-step linear schedule
    cond_dropout: float = 0.1  # probability of training a sample without text, for guidance


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, sigma_min: float = 1e-5) -> torch.Tensor:
    t = _bcast(t, x1)
    return t * x1 + (1 - (1 - sigma_min) * t) * x0


def target_velocity(x0: torch.Tensor, x1: torch.Tensor, sigma_min: float = 1e-5) -> torch.Tensor:
    return x1 - (1 - sigma_min) * x0


def sample_logit_normal(n: int, mean: float = 0.0, std: float = 1.0, generator: torch.Generator | None = None,
                        device: torch.device | str | None = None) -> torch.Tensor:
    return torch.sigmoid(torch.randn(n, generator=generator, device=device) * std + mean)


def resolution_shift(num_tokens: int, base_tokens: int) -> float:
    return max(1.0, math.sqrt(num_tokens / base_tokens))


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Move t towards noise by `shift` (> 1 means noisier). Larger frames carry more redundant
    signal, so the same noise level destroys less of them; shifting keeps the effective
    signal-to-noise ratio comparable across resolutions (SD3's rule, in Movie Gen's t direction)."""
    if shift == 1.0:
        return t
    noise = 1 - t
    noise = shift * noise / (1 + (shift - 1) * noise)
    return 1 - noise


def flow_matching_loss(velocity_fn: VelocityFn, x1: torch.Tensor, cfg: FlowMatchingConfig,
                       num_tokens: int | None = None, generator: torch.Generator | None = None,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between the predicted and target velocity at a random point on the path.

    `velocity_fn(x_t, t)` closes over conditioning. `weight` (broadcastable to x1) restricts
    the loss, e.g. to the masked audio frames.
    """
    b = x1.shape[0]
    # Noise is drawn on the generator's device (a CPU generator drives a GPU run reproducibly).
    g_device = generator.device if generator is not None else x1.device
    t = sample_logit_normal(b, cfg.logit_normal_mean, cfg.logit_normal_std, generator, g_device).to(x1.device)
    if cfg.use_resolution_shift and num_tokens is not None:
        t = shift_time(t, resolution_shift(num_tokens, cfg.shift_base_tokens))
    x0 = torch.randn(x1.shape, generator=generator, device=g_device, dtype=x1.dtype).to(x1.device)
    xt = interpolate(x0, x1, t, cfg.sigma_min)
    err = (velocity_fn(xt, t) - target_velocity(x0, x1, cfg.sigma_min)).pow(2)
    if weight is None:
        return err.mean()
    weight = weight.expand_as(err)
    return (err * weight).sum() / weight.sum().clamp_min(1.0)


def linear_quadratic_schedule(num_steps: int, linear_reference_steps: int = 1000) -> torch.Tensor:
    """Movie Gen's linear-quadratic t schedule, num_steps + 1 points from 0 (noise) to 1 (data).

    The first half of the steps copies the first steps of a `linear_reference_steps` linear
    schedule (small steps where the sample is pure noise and errors compound most); the rest
    is quadratically spaced to reach t = 1, continuing the linear part's value and slope.
    """
    if num_steps < 1:
        raise ValueError("num_steps must be >= 1")
    if num_steps == 1:
        return torch.tensor([0.0, 1.0])
    n_lin = num_steps // 2
    n_quad = num_steps - n_lin
    slope = 1.0 / linear_reference_steps
    t_lin = [i * slope for i in range(n_lin + 1)]
    c = n_lin * slope
    a = (1.0 - c - slope * n_quad) / n_quad**2
    t_quad = [a * j * j + slope * j + c for j in range(1, n_quad + 1)]
    ts = torch.tensor(t_lin + t_quad, dtype=torch.float64)
    ts[-1] = 1.0
    return ts.float()


def guided_velocity(model_fn: Callable[..., torch.Tensor], cond: dict, uncond: dict,
                    scale: float) -> VelocityFn:
    """Classifier-free guidance: v = v_u + s·(v_c - v_u). Conditions are keyword arguments."""

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_c = model_fn(x, t, **cond)
        if scale == 1.0:
            return v_c
        v_u = model_fn(x, t, **uncond)
        return v_u + scale * (v_c - v_u)

    return fn


@torch.no_grad()
def euler_sample(velocity_fn: VelocityFn, x0: torch.Tensor, num_steps: int = 50,
                 schedule: torch.Tensor | None = None, shift: float = 1.0,
                 linear_reference_steps: int = 1000,
                 callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) from t = 0 (x0 = noise) to t = 1 with Euler steps."""
    ts = linear_quadratic_schedule(num_steps, linear_reference_steps) if schedule is None else schedule
    ts = shift_time(ts, shift).to(x0.device)
    x = x0
    for i in range(len(ts) - 1):
        t = ts[i].expand(x.shape[0]).to(x.dtype)
        x = x + (ts[i + 1] - ts[i]).to(x.dtype) * velocity_fn(x, t)
        if callback is not None:
            callback(i + 1, len(ts) - 1)
    return x


def drop_condition(keep: torch.Tensor, cond: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    """Replace rows of `cond` with `null` where keep is False (condition dropout for CFG)."""
    return torch.where(_bcast(keep, cond), cond, null.expand_as(cond))


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))
