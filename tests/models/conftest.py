"""Shared fixtures for the model tests: few threads, offline Hugging Face, one tiny checkpoint."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(1)  # under CPU contention, one thread beats two fighting OpenMP workers


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from reelflow.training.checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=0)


@pytest.fixture(scope="session")
def minilm_text_encoder():
    from reelflow.models.configs import tiny
    from reelflow.models.text_encoder import build_text_encoder

    return build_text_encoder(tiny().text)
