"""The diffusion math against closed forms: an exact Gaussian denoiser drives every sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.configs import DiffusionConfig
from models.diffusion import (
    ClassifierFreeGuidance,
    GaussianDiffusion,
    ModelVarType,
    RowNoise,
    create_diffusion,
    get_named_beta_schedule,
    sample,
    space_timesteps,
)

MU = torch.tensor([0.5, -0.3, 0.0, 0.2])
SIGMA = torch.tensor([0.3, 0.6, 0.1, 0.8])
N = 2000


def optimal_model(diffusion: GaussianDiffusion, prediction: str):
    """E[x0 | x_t] for x0 ~ N(MU, diag SIGMA²), returned as ε, x0 or v (network sees original t)."""
    alphas_cumprod = torch.from_numpy(diffusion.alphas_cumprod).float()

    def model(x: torch.Tensor, t: torch.Tensor, **_: object) -> torch.Tensor:
        ab = alphas_cumprod[t][:, None]
        x0 = MU + (ab.sqrt() * SIGMA**2 / (ab * SIGMA**2 + 1 - ab)) * (x - ab.sqrt() * MU)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        return {"epsilon": eps, "x0": x0, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[prediction]

    return model


def draw(sampler: str, steps: int, prediction: str = "epsilon", eta: float = 0.0) -> torch.Tensor:
    config = DiffusionConfig(schedule="cosine", prediction=prediction)
    model = optimal_model(create_diffusion(config), prediction)
    return sample(
        sampler,
        create_diffusion(config, steps),
        model,
        (N, 4),
        RowNoise(range(N)),
        clip_denoised=False,
        eta=eta,
    )


def test_schedules_pinned_and_monotone() -> None:
    linear = get_named_beta_schedule("linear", 1000)
    cosine = get_named_beta_schedule("cosine", 1000)
    assert linear[0] == pytest.approx(1e-4) and linear[-1] == pytest.approx(0.02)
    assert cosine[0] == pytest.approx(4.1284e-05, rel=1e-3) and cosine[-1] == pytest.approx(0.999)
    for betas in (linear, cosine):
        alphas_cumprod = np.cumprod(1 - betas)
        assert (np.diff(alphas_cumprod) < 0).all() and alphas_cumprod[0] > 0.999 and alphas_cumprod[-1] < 5e-3


def test_respacing_keeps_alphas_cumprod() -> None:
    config = DiffusionConfig(schedule="linear")
    base, spaced = create_diffusion(config), create_diffusion(config, 10)
    assert list(spaced.timestep_map) == space_timesteps(1000, 10)
    assert spaced.timestep_map[0] == 0 and spaced.timestep_map[-1] == 999
    np.testing.assert_allclose(spaced.alphas_cumprod, base.alphas_cumprod[spaced.timestep_map], rtol=1e-12)
    assert space_timesteps(1000, 1) == [999]


def test_q_sample_statistics() -> None:
    diffusion = create_diffusion(DiffusionConfig(schedule="cosine"))
    x0 = torch.full((20000, 1), 0.7)
    t = torch.full((20000,), 300)
    xt = diffusion.q_sample(x0, t, torch.randn(20000, 1, generator=torch.Generator().manual_seed(0)))
    ab = diffusion.alphas_cumprod[300]
    assert xt.mean().item() == pytest.approx(np.sqrt(ab) * 0.7, abs=0.02)
    assert xt.var().item() == pytest.approx(1 - ab, rel=0.05)


@pytest.mark.parametrize(
    ("sampler", "steps", "eta", "std_tol"),
    [
        ("ddpm", 1000, 0.0, 0.05),
        ("ddpm", 50, 0.0, 0.12),
        ("ddim", 50, 0.0, 0.05),
        ("ddim", 50, 1.0, 0.12),
        ("dpm++2m", 100, 0.0, 0.06),
    ],
)
def test_samplers_reproduce_the_gaussian(sampler: str, steps: int, eta: float, std_tol: float) -> None:
    x = draw(sampler, steps, eta=eta)
    # Mean: sampling error σ/√N ≈ 0.018 at worst; std within a relative tolerance per sampler.
    assert (x.mean(0) - MU).abs().max().item() < 0.05
    np.testing.assert_allclose(x.std(0).numpy(), SIGMA.numpy(), rtol=std_tol, atol=0.01)


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_every_parameterisation_gives_the_same_sampler(prediction: str) -> None:
    reference = draw("ddim", 20, "epsilon")
    torch.testing.assert_close(draw("ddim", 20, prediction), reference, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m"])
def test_fewer_steps_degrade_gracefully(sampler: str) -> None:
    def error(steps: int) -> float:
        return float((draw(sampler, steps).std(0) - SIGMA).abs().max())

    few, many = error(10), error(100)
    assert many <= few and few < 0.25


def test_training_loss_prefers_the_optimal_denoiser() -> None:
    diffusion = create_diffusion(DiffusionConfig(schedule="cosine"))
    gen = torch.Generator().manual_seed(0)
    x0 = MU + SIGMA * torch.randn(4096, 4, generator=gen)
    t = torch.randint(0, 1000, (4096,), generator=gen)
    noise = torch.randn(4096, 4, generator=gen)
    best = diffusion.training_losses(optimal_model(diffusion, "epsilon"), x0, t, noise=noise)["loss"].mean()
    zero = diffusion.training_losses(lambda x, t: torch.zeros_like(x), x0, t, noise=noise)["loss"].mean()
    assert best < 0.5 * zero


def test_learned_range_variance_and_hybrid_loss() -> None:
    diffusion = create_diffusion(DiffusionConfig(schedule="cosine", learn_sigma=True), 50)
    assert diffusion.var_type == ModelVarType.LEARNED_RANGE
    x = torch.randn(8, 3, 4, 4)
    t = torch.full((8,), 20)
    for v in (-1.0, 1.0):
        out = diffusion.p_mean_variance(
            lambda x, t, v=v: torch.cat([torch.zeros_like(x), torch.full_like(x, v)], 1), x, t
        )
        expected = diffusion.posterior_variance[20] if v < 0 else diffusion.betas[20]
        assert out["variance"].mean().item() == pytest.approx(expected, rel=1e-4)
    losses = diffusion.training_losses(lambda x, t: torch.zeros(8, 6, 4, 4), x.clamp(-1, 1), t)
    assert set(losses) == {"mse", "vb", "loss"} and (losses["vb"] > 0).all()


def test_guidance_mixes_in_one_forward() -> None:
    calls: list[int] = []

    def model(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return x * c[:, None]

    x, t = torch.ones(3, 2), torch.zeros(3, dtype=torch.long)
    cond, uncond = {"c": torch.full((3,), 2.0)}, {"c": torch.full((3,), 0.5)}
    assert torch.equal(ClassifierFreeGuidance(model, 1.0, cond, uncond)(x, t), model(x, t, **cond))
    assert torch.equal(ClassifierFreeGuidance(model, 0.0, cond, uncond)(x, t), model(x, t, **uncond))
    calls.clear()
    mixed = ClassifierFreeGuidance(model, 3.0, cond, uncond)(x, t)
    assert calls == [6]  # both halves in one batched call
    torch.testing.assert_close(mixed, torch.full((3, 2), 0.5 + 3.0 * 1.5))
    learned = ClassifierFreeGuidance(
        lambda x, t, c: torch.cat([x * c[:, None], x * c[:, None]], 1), 3.0, cond, uncond, 2
    )
    out = learned(x, t)
    torch.testing.assert_close(
        out[:, 2:], torch.full((3, 2), 2.0)
    )  # variance channels from the conditional half


def test_row_noise_is_independent_of_batch_composition() -> None:
    alone = RowNoise([7]).randn((5,))
    batch = RowNoise([3, 7, 9]).randn((5,))
    assert torch.equal(alone[0], batch[1]) and not torch.equal(batch[0], batch[1])
    config = DiffusionConfig(schedule="cosine")
    model = optimal_model(create_diffusion(config), "epsilon")
    spaced = create_diffusion(config, 10)
    one = sample("ddpm", spaced, model, (1, 4), RowNoise([7]))
    three = sample("ddpm", spaced, model, (3, 4), RowNoise([3, 7, 9]))
    torch.testing.assert_close(one[0], three[1])
