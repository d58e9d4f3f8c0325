"""The shape probe on the real tiny networks (random weights): from a barely noised render the
chain's last step returns the render, so every shape must be named right."""

from __future__ import annotations

import pytest

from models.evaluation.shape_probe import GROUPS, shape_probe
from models.pipeline import UnclipPipeline


def test_probe_from_the_last_step_keeps_every_shape(tiny_pipeline: UnclipPipeline) -> None:
    """A fresh v-prediction decoder outputs v = 0 (zero-initialised last layer), so its x0 at the
    chain's last timestep (t = 0) is the render itself."""
    steps = tiny_pipeline.config.sampling.for_stage("decoder").steps
    probe = shape_probe(tiny_pipeline, n=12, starts=[1 / steps], batch_size=5)
    assert probe.n == 12 and list(probe.accuracy) == [0] and sum(probe.counts.values()) == 12
    assert probe.accuracy[0]["all"] == 1.0
    assert all(probe.accuracy[0][g] == 1.0 for g in GROUPS if probe.counts[g])
    assert probe.to_markdown().splitlines()[2].startswith("| 0 | 100% |")
    with pytest.raises(ValueError, match="starts"):
        shape_probe(tiny_pipeline, n=2, starts=[0.0])
