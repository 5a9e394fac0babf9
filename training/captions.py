"""Movie Gen's frame-rate token in captions and prompts (``FPS-16 A red circle moves right.``).

Curation writes the token of the *source* frame rate; training resamples clips to its stage's rate,
so the caption a sample is trained with carries the rate the model sees, and generation prepends the
rate it samples at. Pure Python: the sampler imports it without the data pipeline's dependencies.
"""

from __future__ import annotations

import re

FPS_TOKEN = re.compile(r"^FPS-\d+\s+")


def fps_token(fps: float) -> str:
    """``FPS-<n>``, n the rounded rate (at least 1), as curation's caption assembly writes it."""
    return f"FPS-{max(1, int(round(fps)))}"


def at_rate(caption: str, fps: float | None) -> str:
    """``caption`` with its leading token set to ``fps``; ``fps`` None (an image: no frame rate)
    drops the token. A caption without a token is left alone: the dataset did not use them."""
    if not FPS_TOKEN.match(caption):
        return caption
    rest = FPS_TOKEN.sub("", caption, count=1)
    return rest if fps is None else f"{fps_token(fps)} {rest}"


def with_rate(prompt: str, fps: float) -> str:
    """A prompt behind the token of ``fps``, unless it brings its own."""
    return prompt if FPS_TOKEN.match(prompt) else f"{fps_token(fps)} {prompt}"
