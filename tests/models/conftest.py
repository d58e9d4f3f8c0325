"""Fixtures of the model tests: the tiny configuration's networks with random weights, built once
per module that asks (module scope, as each module built its own before)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.clip import ClipConfig, build_clip_model
from models.pipeline import UnclipPipeline


@pytest.fixture(scope="module")
def tiny_clip() -> nn.Module:
    """The tiny CLIP (``ClipConfig()``, the tiny preset's), seeded, in training mode as built."""
    torch.manual_seed(0)
    return build_clip_model(ClipConfig())


@pytest.fixture(scope="module")
def tiny_pipeline() -> UnclipPipeline:
    """The whole chain on the tiny preset with random weights (seed 0)."""
    return UnclipPipeline.random("tiny", seed=0)
