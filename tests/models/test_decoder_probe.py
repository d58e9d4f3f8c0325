"""The decoder placement probe: the cell finder on the world's own renders, and the probe on the
real tiny networks (random weights) at a timestep where the noisy image still shows everything."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.data.shapes import BACKGROUNDS, POSITIONS, render, sample_spec
from models.evaluation.decoder_probe import CONDITIONS, object_cell, placement_probe
from models.pipeline import UnclipPipeline


@pytest.mark.parametrize("position", list(POSITIONS))
def test_object_cell_finds_every_position_of_the_world(position: str) -> None:
    rng = np.random.default_rng(7)
    for _ in range(6):  # large and small, every shape, jittered, on every background
        spec = sample_spec(rng, position=position)
        image = torch.from_numpy(render(spec, 64)).permute(2, 0, 1).float() / 127.5 - 1.0
        background = torch.tensor(BACKGROUNDS[spec.background]).float() / 127.5 - 1.0
        assert object_cell(image, background) == position, spec


def test_probe_on_a_barely_noised_image_finds_every_object(tiny_pipeline: UnclipPipeline) -> None:
    """A fresh v-prediction decoder outputs v = 0 (zero-initialised last layer), so its x0 at t = 0
    is the render itself: every condition set must find the right cell."""
    probe = placement_probe(tiny_pipeline, n=9, timesteps=[0], batch_size=4)
    assert probe.n == 9 and list(probe.accuracy) == [0]
    assert probe.accuracy[0] == dict.fromkeys(CONDITIONS, 1.0)
    assert "| 0 | 100% | 100% | 100% | 100% |" in probe.to_markdown()
    with pytest.raises(ValueError, match="schedule"):
        placement_probe(tiny_pipeline, n=2, timesteps=[1000])
