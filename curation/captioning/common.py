"""Shared pieces of the captioning models: the *disabled* error and resolving configured weights.

Weights come from a configured local path or ``s3://`` URI (fetched once into a local cache by
``Storage.localize``); nothing is ever downloaded from a model hub. A model without a configured
path is *disabled* (``enabled`` False, ``disabled_reason`` says why) and raises ``ModelDisabled``
when asked for output; a path that is set but missing is a configuration error.
"""

from __future__ import annotations

from pathlib import Path


class ModelDisabled(RuntimeError):
    """A model without configured weights was asked for output (never a made-up result)."""


def local_weights(uri: str, what: str, allow_dir: bool = False) -> Path:
    """Local path of configured weights ``uri`` (a path, or ``s3://`` fetched into a cache).

    Raises ``FileNotFoundError`` naming ``what`` when nothing is there (a directory counts only
    when ``allow_dir``: Hugging Face-style model folders)."""
    from reelflow.curation.storage import Storage

    path = Storage().localize(uri)
    if path.is_file() or (allow_dir and path.is_dir()):
        return path
    raise FileNotFoundError(f"{what}: configured weights not found: {uri}")
