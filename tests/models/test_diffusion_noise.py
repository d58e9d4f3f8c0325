"""Per-row noise: a seed gives the same numbers, and the same sample, whatever batch it is in."""

from __future__ import annotations

import pytest
import torch

from models.configs import DiffusionConfig
from models.diffusion import RowNoise, sample
from models.factory import create_diffusion
from tests.models.test_diffusion_gaussian import optimal_model


def test_rows_reproduce_across_batch_compositions() -> None:
    alone, batch = RowNoise([7]), RowNoise([3, 7, 9])
    assert len(alone) == 1 and len(batch) == 3
    for shape in ((5,), (2, 3, 3)):  # successive draws of any shape stay in step
        a, b = alone.randn(shape), batch.randn(shape)
        assert a.shape == (1, *shape) and b.shape == (3, *shape)
        assert torch.equal(a[0], b[1]) and not torch.equal(b[0], b[1])


def test_draws_do_not_depend_on_device_or_dtype() -> None:
    a = RowNoise([11, 12]).randn((4,), device="cpu", dtype=torch.float64)
    b = RowNoise([11, 12]).randn((4,))
    assert a.dtype == torch.float64 and torch.equal(a.float(), b)
    assert torch.equal(b[0], torch.randn(4, generator=torch.Generator().manual_seed(11)))


def test_select_keeps_the_streams_where_they_are() -> None:
    noise = RowNoise([3, 7, 9])
    noise.randn((2,))
    picked = noise.select([2, 0])
    assert len(picked) == 2
    ref = RowNoise([9, 3])
    ref.randn((2,))
    assert torch.equal(picked.randn((6,)), ref.randn((6,)))
    with pytest.raises(ValueError):
        RowNoise([1], generators=[torch.Generator()])


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m"])
def test_a_sample_depends_only_on_its_seed(sampler: str) -> None:
    config = DiffusionConfig(schedule="cosine")
    model = optimal_model(create_diffusion(config).alphas_cumprod, "epsilon")
    spaced = create_diffusion(config, 10)
    eta = 1.0 if sampler == "ddim" else 0.0  # stochastic steps for DDIM too
    one = sample(sampler, model, (1, 4, 3), spaced, RowNoise([7]), eta=eta)
    three = sample(sampler, model, (3, 4, 3), spaced, RowNoise([3, 7, 9]), eta=eta)
    swapped = sample(sampler, model, (2, 4, 3), spaced, RowNoise([7, 3]), eta=eta)
    # Elementwise math only: equal up to vectorised-vs-scalar rounding of exp/log.
    torch.testing.assert_close(one[0], three[1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(swapped[0], three[1], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(three[0], three[1])
