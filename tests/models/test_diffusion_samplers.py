"""Every sampler, driven by the EXACT denoiser of a Gaussian data distribution N(MU, diag SIGMA²).

With the exact denoiser the only errors left are the sampler's own (discretisation) and Monte
Carlo noise, so:

* Deterministic samplers (DDIM η=0, DPM-Solver++(2M)) are affine maps of x_T per channel for
  Gaussian data (every x̂_0 is affine in x_t). A least-squares fit out = A x_T + b against the
  x_T the same seeds give recovers the exact output law N(b, A²) with no sampling noise, so we
  can check the convergence ORDER: error ∝ 1/S for DDIM (first order), ∝ 1/S² for DPM-Solver++(2M).
* Stochastic samplers are checked on sample moments of n = ROWS·K = 4096 draws per channel, with
  tolerances of 4 standard errors (mean: 4σ/√n; std: 4/√(2n) ≈ 4.4% relative) plus the
  discretisation bias measured for that sampler and step count (stated at each test).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.configs import DiffusionConfig
from models.diffusion import RowNoise, ddim_sample_loop, ddpm_sample_loop, initial_noise, sample
from models.diffusion.respace import SpacedDiffusion
from models.factory import create_diffusion
from tests.models.test_diffusion_gaussian import MU, SIGMA, optimal_model

ROWS, K = 16, 256  # 16 noise streams x 256 independent copies per row: n = 4096 samples per channel
SHAPE = (ROWS, 4, K)
N = ROWS * K
MEAN_TOL = (4 * SIGMA / np.sqrt(N)).float()  # 4 standard errors of the sample mean, per channel
STD_TOL = 4 / np.sqrt(2 * N)  # 4 standard errors of the sample std, relative


def draw(
    sampler: str,
    steps: int,
    prediction: str = "epsilon",
    *,
    eta: float = 0.0,
    schedule: str = "cosine",
    learn_sigma: bool = False,
    seeds: range = range(ROWS),
) -> torch.Tensor:
    """Samples [ROWS x 4 x K] from the exact denoiser through a process respaced to ``steps``."""
    config = DiffusionConfig(schedule=schedule, prediction=prediction, learn_sigma=learn_sigma)
    base, spaced = create_diffusion(config), create_diffusion(config, steps)
    model = optimal_model(base.alphas_cumprod, prediction, learned_for=spaced if learn_sigma else None)
    shape = (len(seeds), *SHAPE[1:])
    return sample(sampler, model, shape, spaced, RowNoise(seeds), clip_denoised=False, eta=eta)


def channels(x: torch.Tensor) -> torch.Tensor:
    """[rows x 4 x K] → [rows·K x 4]."""
    return x.transpose(1, 2).reshape(-1, 4)


def exact_law(sampler: str, steps: int, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, A) with out = A x_T + b per channel, for a deterministic sampler."""
    out = channels(draw(sampler, steps, **kwargs)).double()  # type: ignore[arg-type]
    x_t = channels(RowNoise(range(ROWS)).randn(SHAPE[1:])).double()  # the same first draws
    xc, oc = x_t - x_t.mean(0), out - out.mean(0)
    a = (xc * oc).sum(0) / (xc * xc).sum(0)
    b = out.mean(0) - a * x_t.mean(0)
    # Affine up to float32 rounding (the x̂_0 of the first step multiplies x_T by 1/√ᾱ ≈ 2·10⁴).
    assert (out - a * x_t - b).abs().max() < 5e-3
    return b, a


def std_error(a: torch.Tensor) -> float:
    """max over channels of |A/σ - 1|: the relative error of the output standard deviation."""
    return float((a / SIGMA - 1).abs().max())


def assert_moments(x: torch.Tensor, std_bias: float) -> None:
    flat = channels(x)
    assert ((flat.mean(0) - MU.float()).abs() < MEAN_TOL).all(), flat.mean(0)
    rel = (flat.std(0) / SIGMA.float() - 1).abs()
    assert (rel < STD_TOL + std_bias).all(), rel


# -- deterministic samplers: exact output law ------------------------------------------------------


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m"])
def test_deterministic_samplers_reach_the_gaussian(sampler: str) -> None:
    b, a = exact_law(sampler, 200)
    assert (b - MU).abs().max() < 1e-3  # ᾱ_{T-1} ≈ 2·10⁻⁹: x_T ~ N(0, I) is all but exact
    # DDIM at 200 steps: 3.3% on the σ = 0.1 channel (first order, see below); DPM-Solver++: 1.3%.
    assert std_error(a) < (0.04 if sampler == "ddim" else 0.015)


def test_convergence_order() -> None:
    """DDIM is first order: error x1/4 for 4x the steps. DPM-Solver++(2M) is second order: x1/16
    asymptotically; measured 50 → 200 steps: 10 on the stiff σ = 0.1 channel (its x̂_0 turns at
    SNR = 1/σ² = 100, where the cosine grid is coarse in λ), 17-21 on the others."""
    ddim = [exact_law("ddim", s)[1] / SIGMA - 1 for s in (50, 200)]
    dpm = [exact_law("dpm++2m", s)[1] / SIGMA - 1 for s in (50, 200)]
    ddim_ratio, dpm_ratio = ddim[0] / ddim[1], dpm[0] / dpm[1]
    assert ((ddim_ratio > 3.0) & (ddim_ratio < 5.0)).all(), ddim_ratio
    assert (dpm_ratio > 8.0).all(), dpm_ratio
    assert (dpm[1].abs() < ddim[1].abs() / 2).all()  # the second-order correction points the right way


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m"])
def test_fewer_steps_degrade_gracefully(sampler: str) -> None:
    errors = {steps: std_error(exact_law(sampler, steps)[1]) for steps in (10, 50)}
    assert errors[10] >= errors[50]
    assert errors[50] < 0.15 and errors[10] < 0.6  # measured: ddim 0.12 / 0.49, dpm++ 0.13 / 0.36
    b, _ = exact_law(sampler, 10)
    assert (b - MU).abs().max() < 1e-3  # the mean is right at any step count


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m"])
@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_every_parameterisation_gives_the_same_samples(sampler: str, prediction: str) -> None:
    """ε, x_0 and v networks that agree on x̂_0 must give the same samples (float32 rounding aside)."""
    reference = draw(sampler, 20, "epsilon")
    torch.testing.assert_close(draw(sampler, 20, prediction), reference, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_config_sweep_dpmpp(schedule: str, prediction: str) -> None:
    b, a = exact_law("dpm++2m", 100, prediction=prediction, schedule=schedule)
    # linear: ᾱ_{T-1} = 4·10⁻⁵, so the true x_T has mean √ᾱ MU ≈ 0.006 MU that N(0, I) ignores.
    assert (b - MU).abs().max() < (1e-3 if schedule == "cosine" else 5e-3)
    assert std_error(a) < 0.1  # measured 0.05 (cosine) and 0.09 (linear), both on σ = 0.1


# -- stochastic samplers: sample moments ------------------------------------------------------------


def test_ddpm_with_the_exact_learned_variance_is_exact_at_any_step_count() -> None:
    """For Gaussian data p(x_{i-1} | x_i) is exactly Gaussian with variance β̃_i + coef1² Var[x_0|x_i],
    inside [β̃_i, β_i] for SIGMA ≤ 1; learned-range DDPM then samples ancestrally from the exact
    conditionals, so 10 steps are as good as 1000: only Monte Carlo error remains."""
    assert_moments(draw("ddpm", 10, learn_sigma=True), std_bias=0.01)


def test_ddpm_fixed_small_variance() -> None:
    """With σ² = β̃ (exact only for a point mass) DDPM under-disperses, less with more steps:
    measured -31% / -9% / -1.4% relative std at 10 / 50 / 500 steps (worst channel, σ = 0.1: -56% / -19%)."""
    stds = {steps: channels(draw("ddpm", steps)).std(0) / SIGMA.float() for steps in (10, 50)}
    assert (stds[10] < stds[50]).all() and (stds[50] < 1 + STD_TOL).all()
    assert (stds[10] > 0.35).all()  # bounded
    assert_moments(draw("ddpm", 500), std_bias=0.03)


def test_ddim_eta_one_is_ddpm() -> None:
    """DDIM with η = 1 has σ_i² = β̃_i and mean √ᾱ_{i-1} x̂_0 + √(1-ᾱ_{i-1}-β̃_i) ε̂, which is the DDPM
    posterior mean (Song et al. §4.1); with the same noise streams the samples coincide."""
    torch.testing.assert_close(draw("ddim", 30, eta=1.0), draw("ddpm", 30), atol=1e-4, rtol=1e-4)


def test_ddim_eta_interpolates() -> None:
    """0 < η < 1 sits between deterministic DDIM and DDPM; η = 1 from 400 steps gets the moments."""
    half = channels(draw("ddim", 50, eta=0.5)).std(0)
    zero = channels(draw("ddim", 50)).std(0)
    one = channels(draw("ddim", 50, eta=1.0)).std(0)
    assert ((half - zero) * (one - half) >= -1e-3).all()  # monotone in η on every channel
    assert_moments(draw("ddim", 400, eta=1.0), std_bias=0.03)


# -- interface ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m"])
def test_progress_and_call_count(sampler: str) -> None:
    config = DiffusionConfig()
    spaced = create_diffusion(config, 7)
    calls: list[list[int]] = []
    reports: list[tuple[int, int]] = []

    def model(x: torch.Tensor, t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        assert label.shape == (3,)  # model_kwargs pass through untouched
        calls.append(t.tolist())
        return torch.zeros_like(x)

    out = sample(
        sampler, model, (3, 2, 5), spaced, RowNoise([1, 2, 3]),
        model_kwargs={"label": torch.zeros(3)}, callback=lambda s, n: reports.append((s, n)),
    )  # fmt: skip
    assert out.shape == (3, 2, 5) and out.dtype == torch.float32
    assert reports == [(s, 7) for s in range(1, 8)]
    assert [c[0] for c in calls] == list(reversed(spaced.timestep_map.tolist()))  # original t, T-1 first


def test_sample_refuses_bad_arguments() -> None:
    spaced = create_diffusion(DiffusionConfig(), 3)

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    with pytest.raises(ValueError, match="noise streams"):
        sample("ddim", model, (2, 3), spaced, RowNoise([1]))
    with pytest.raises(ValueError, match="unknown sampler"):
        sample("euler", model, (1, 3), spaced, RowNoise([1]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eta"):
        sample("ddpm", model, (1, 3), spaced, RowNoise([1]), eta=0.5)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="noise"):  # stochastic steps need the rows' streams
        ddpm_sample_loop(model, x, spaced)
    with pytest.raises(ValueError, match="noise"):
        ddim_sample_loop(model, x, spaced, eta=1.0)
    with pytest.raises(ValueError, match="noise streams"):
        ddim_sample_loop(model, x, spaced, noise=RowNoise([1, 2, 3]), eta=1.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_state_dtype(dtype: torch.dtype) -> None:
    """The network sees x in ``dtype``; the update math runs in ≥ float32 and matches float32."""
    config = DiffusionConfig()
    base, spaced = create_diffusion(config), create_diffusion(config, 10)
    exact = optimal_model(base.alphas_cumprod, "epsilon")
    seen: set[torch.dtype] = set()

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.add(x.dtype)
        return exact(x.float(), t).to(x.dtype)  # a network whose output is rounded to dtype

    out = sample("dpm++2m", model, (4, 4, 8), spaced, RowNoise(range(4)), clip_denoised=False, dtype=dtype)
    ref = sample("dpm++2m", exact, (4, 4, 8), spaced, RowNoise(range(4)), clip_denoised=False)
    assert out.dtype == dtype and seen == {dtype}
    # bf16 keeps 8 bits of mantissa (measured 0.045); the float32 reference itself is off by ~1e-3
    # (x̂_0 = x_T/√ᾱ - ... at ᾱ ≈ 2·10⁻⁹ multiplies float32 rounding by 2·10⁴), float64 is not.
    tol = 0.1 if dtype == torch.bfloat16 else 3e-3
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)


def test_clip_denoised_bounds_the_result() -> None:
    spaced = create_diffusion(DiffusionConfig(), 5)
    for sampler in ("ddpm", "ddim", "dpm++2m"):
        out = sample(sampler, lambda x, t: -3 * x, (4, 6), spaced, RowNoise(range(4)), clip_denoised=True)
        assert out.abs().max() <= 1.0  # the last step returns (or is the mean of) the clipped x̂_0


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m"])
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_one_step_returns_the_prediction_from_pure_noise(sampler: str, learn_sigma: bool) -> None:
    """A one-step process keeps only t = T-1 and returns x̂_0 there, whatever the variance type."""
    config = DiffusionConfig(learn_sigma=learn_sigma)
    spaced = create_diffusion(config, 1)
    assert list(spaced.timestep_map) == [999] and np.isfinite(spaced.posterior_log_variance_clipped).all()

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        pred = torch.full_like(x, 0.25)  # x_0-style constant output via ε below
        eps = (x - spaced.sqrt_alphas_cumprod[0] * pred) / spaced.sqrt_one_minus_alphas_cumprod[0]
        return torch.cat([eps, torch.zeros_like(x)], 1) if learn_sigma else eps

    out = sample(sampler, model, (2, 3), spaced, RowNoise([1, 2]), clip_denoised=False)
    torch.testing.assert_close(out, torch.full((2, 3), 0.25), atol=2e-3, rtol=0)


def test_ddim_from_a_given_start_continues_the_chain() -> None:
    """Started from x_T itself, the sampler gives the plain chain of :func:`sample`; started
    mid-chain from the plain chain's own state there, it ends where the plain chain ends."""
    config = DiffusionConfig(schedule="cosine", prediction="v")
    base, spaced = create_diffusion(config), create_diffusion(config, 10)
    model = optimal_model(base.alphas_cumprod, "v")
    shape = (ROWS, 4, 8)
    plain = sample("ddim", model, shape, spaced, RowNoise(range(ROWS)), clip_denoised=False)
    x_t = initial_noise(shape, RowNoise(range(ROWS)))
    again = ddim_sample_loop(model, x_t, spaced, clip_denoised=False)
    torch.testing.assert_close(again, plain, rtol=0, atol=0)
    states: list[torch.Tensor] = []  # x as each model call sees it: states[5] is x at index 4

    def recording(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        states.append(x.clone())
        return model(x, t)

    ddim_sample_loop(recording, x_t, spaced, clip_denoised=False)
    tail = SpacedDiffusion(spaced.timestep_map[:5], base.betas, spaced.mean_type, spaced.var_type)
    resumed = ddim_sample_loop(model, states[5], tail, clip_denoised=False)
    torch.testing.assert_close(resumed, plain, rtol=1e-5, atol=1e-5)
