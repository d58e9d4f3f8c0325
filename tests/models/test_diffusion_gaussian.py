"""The forward process, the reverse-step statistics and the losses against closed forms.

The reference data distribution throughout is x_0 ~ N(MU, diag SIGMA²) over D = 4 channels, whose
optimal denoiser is known exactly:

    E[x_0 | x_t] = MU + √ᾱ SIGMA² / (ᾱ SIGMA² + 1 - ᾱ) · (x_t - √ᾱ MU)
    Var[x_0 | x_t] = SIGMA² (1 - ᾱ) / (ᾱ SIGMA² + 1 - ᾱ)

Data are laid out [rows x D x K]: D is the channel dimension (dim 1, the one learned sigma
splits), K independent copies per row give many samples for few noise streams.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.configs import DiffusionConfig
from models.diffusion import (
    GaussianDiffusion,
    ModelMeanType,
    ModelVarType,
    SpacedDiffusion,
    get_named_beta_schedule,
    space_timesteps,
)
from models.factory import create_diffusion

MU = torch.tensor([0.5, -0.3, 0.0, 0.2], dtype=torch.float64)
SIGMA = torch.tensor([0.3, 0.6, 0.1, 0.8], dtype=torch.float64)


def _per_row(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """[N] → [N x 1 x ...] with ``ndim`` dimensions."""
    return values.view(-1, *([1] * (ndim - 1)))


def _channels(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[D] → [1 x D x 1 ...] broadcastable against x [N x D x ...], in x's dtype."""
    return values.to(x.dtype).view(1, -1, *([1] * (x.dim() - 2)))


def optimal_model(
    base_alphas_cumprod: np.ndarray,
    prediction: str,
    learned_for: GaussianDiffusion | None = None,
):
    """The exact denoiser of N(MU, diag SIGMA²), returning ε, x0 or v; the network sees ORIGINAL t.

    ``learned_for``: also return the learned-range variance channels that make σ² equal the exact
    Var[x_{i-1} | x_i] = β̃_i + coef1_i² Var[x_0 | x_i] of that (possibly respaced) process.
    """
    table = torch.from_numpy(base_alphas_cumprod)

    def model(x: torch.Tensor, t: torch.Tensor, **_: object) -> torch.Tensor:
        ab = _per_row(table[t], x.dim()).to(x.dtype)
        mu, var = _channels(MU, x), _channels(SIGMA**2, x)
        x0 = mu + ab.sqrt() * var / (ab * var + 1 - ab) * (x - ab.sqrt() * mu)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        out = {"epsilon": eps, "x0": x0, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[prediction]
        if learned_for is None:
            return out
        return torch.cat([out, _exact_variance_channels(learned_for, t, ab, var, x)], dim=1)

    return model


def _exact_variance_channels(
    diffusion: GaussianDiffusion, t: torch.Tensor, ab: torch.Tensor, var: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """v in [-1, 1] with exp(frac log β_i + (1-frac) log β̃_i) = the exact reverse variance."""
    i = torch.from_numpy(np.searchsorted(diffusion.timestep_map, t.numpy()))
    var_x0 = var * (1 - ab) / (ab * var + 1 - ab)

    def gather(arr: np.ndarray) -> torch.Tensor:
        return _per_row(torch.from_numpy(arr)[i], x.dim()).to(x.dtype)

    exact = gather(diffusion.posterior_variance) + gather(diffusion.posterior_mean_coef1) ** 2 * var_x0
    min_log, max_log = gather(diffusion.posterior_log_variance_clipped), gather(np.log(diffusion.betas))
    frac = (exact.log() - min_log) / (max_log - min_log)
    return (2 * frac - 1).clamp(-1, 1).expand_as(x)


def gaussian_data(n: int, seed: int, k: int = 1) -> torch.Tensor:
    """x_0 [n x 4 x k] from N(MU, diag SIGMA²)."""
    z = torch.randn(n, 4, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (MU.view(1, 4, 1) + SIGMA.view(1, 4, 1) * z).float()


# -- schedules ----------------------------------------------------------------------------------


def test_schedules_pinned_reference_numbers() -> None:
    cosine = get_named_beta_schedule("cosine", 1000)
    linear = get_named_beta_schedule("linear", 1000)
    assert cosine.dtype == np.float64 and cosine.shape == (1000,)
    np.testing.assert_allclose(
        cosine[:3], [4.128422482196914e-05, 4.614175273665033e-05, 5.099948119891007e-05], rtol=1e-12
    )
    assert cosine[500] == pytest.approx(0.003155691441585007, rel=1e-12)
    assert cosine[-1] == 0.999  # the clip
    assert np.cumprod(1 - cosine)[-1] == pytest.approx(2.4287669070348567e-09, rel=1e-9)
    np.testing.assert_allclose(linear[:3], [1e-4, 1.1991991991991992e-4, 1.3983983983983984e-4], rtol=1e-12)
    assert linear[-1] == pytest.approx(0.02, rel=1e-12)
    assert np.cumprod(1 - linear)[-1] == pytest.approx(4.035829765375676e-05, rel=1e-9)
    # Scaled by 1000/T for other lengths.
    linear4000 = get_named_beta_schedule("linear", 4000)
    assert linear4000[0] == pytest.approx(2.5e-5) and linear4000[-1] == pytest.approx(0.005)


@pytest.mark.parametrize("name", ["cosine", "linear"])
@pytest.mark.parametrize("timesteps", [50, 1000, 4000])
def test_schedule_sanity(name: str, timesteps: int) -> None:
    betas = get_named_beta_schedule(name, timesteps)
    alphas_cumprod = np.cumprod(1 - betas)
    assert ((betas > 0) & (betas <= 0.999)).all()
    assert (np.diff(alphas_cumprod) < 0).all()  # strictly more noise at every step
    assert alphas_cumprod[0] > 0.98 and alphas_cumprod[-1] < 5e-3
    if name == "cosine":
        # ᾱ_t = f(t)/f(0) (eq. 17) wherever no β was clipped.
        f = np.cos((np.arange(1, timesteps + 1) / timesteps + 0.008) / 1.008 * np.pi / 2) ** 2
        f0 = np.cos(0.008 / 1.008 * np.pi / 2) ** 2
        np.testing.assert_allclose(alphas_cumprod[:-1], (f / f0)[:-1], rtol=1e-9)


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown beta schedule"):
        get_named_beta_schedule("quadratic", 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timesteps >= 21"):
        get_named_beta_schedule("linear", 20)  # β_T would be 1.0


# -- respacing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "steps"), [(1000, 2), (1000, 10), (1000, 50), (1000, 999), (1000, 1000), (7, 3)]
)
def test_space_timesteps_is_strided_with_both_ends(total: int, steps: int) -> None:
    kept = space_timesteps(total, steps)
    assert len(kept) == steps and kept == sorted(set(kept))
    assert kept[0] == 0 and kept[-1] == total - 1
    gaps = np.diff(kept)
    assert gaps.max() - gaps.min() <= 1  # evenly strided up to rounding


def test_space_timesteps_edge_cases() -> None:
    assert space_timesteps(1000, 1) == [999]
    assert space_timesteps(1000, 4) == [0, 333, 666, 999]
    for bad in (0, 1001):
        with pytest.raises(ValueError):
            space_timesteps(1000, bad)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_respacing_keeps_the_base_alphas_cumprod(schedule: str) -> None:
    config = DiffusionConfig(schedule=schedule)
    base, spaced = create_diffusion(config), create_diffusion(config, 10)
    assert isinstance(spaced, SpacedDiffusion) and spaced.num_timesteps == 10
    assert list(spaced.timestep_map) == space_timesteps(1000, 10)
    # Equal up to float64 rounding of β'_i = 1 - ᾱ_k/ᾱ_prev and the cumprod back (1e-9 relative at ᾱ ≈ 2e-9).
    np.testing.assert_allclose(spaced.alphas_cumprod, base.alphas_cumprod[spaced.timestep_map], rtol=1e-8)
    # Uneven subsets too, in any order.
    odd = SpacedDiffusion([999, 3, 500, 3], base.betas, base.mean_type, base.var_type)
    assert list(odd.timestep_map) == [3, 500, 999]
    np.testing.assert_allclose(odd.alphas_cumprod, base.alphas_cumprod[[3, 500, 999]], rtol=1e-8)


def test_spaced_process_shows_the_network_original_timesteps() -> None:
    spaced = create_diffusion(DiffusionConfig(), 4)
    seen: list[list[int]] = []

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.dtype == torch.long
        seen.append(t.tolist())
        return torch.zeros_like(x)

    x = torch.zeros(2, 3)
    for i in range(4):
        spaced.p_mean_variance(model, x, torch.full((2,), i))
    spaced.training_losses(model, x, torch.tensor([0, 3]))
    assert seen == [[0, 0], [333, 333], [666, 666], [999, 999], [0, 999]]


def test_create_diffusion_maps_the_config() -> None:
    full = create_diffusion(DiffusionConfig(schedule="linear", timesteps=500, prediction="v"))
    assert type(full) is GaussianDiffusion and full.num_timesteps == 500
    assert full.mean_type == ModelMeanType.V and full.var_type == ModelVarType.FIXED_SMALL
    np.testing.assert_array_equal(full.betas, get_named_beta_schedule("linear", 500))
    learned = create_diffusion(DiffusionConfig(prediction="x0", learn_sigma=True), 25)
    assert learned.mean_type == ModelMeanType.START_X and learned.var_type == ModelVarType.LEARNED_RANGE
    assert learned.num_timesteps == 25
    assert type(create_diffusion(DiffusionConfig(), 1000)) is GaussianDiffusion


# -- forward process and posterior ----------------------------------------------------------------


def test_q_sample_statistics() -> None:
    diffusion = create_diffusion(DiffusionConfig(schedule="cosine"))
    n = 20000
    x0 = torch.full((n, 2), 0.7)
    t = torch.tensor([100, 700]).repeat(n // 2)  # two timesteps, interleaved rows
    xt = diffusion.q_sample(x0, t, torch.randn(n, 2, generator=torch.Generator().manual_seed(0)))
    for offset, step in enumerate((100, 700)):
        rows = xt[offset::2]
        ab = diffusion.alphas_cumprod[step]
        # Standard errors: √((1-ᾱ)/10⁴) ≤ 0.01 for the mean, √(2/10⁴) ≈ 1.4% for the variance.
        assert rows.mean().item() == pytest.approx(np.sqrt(ab) * 0.7, abs=0.03)
        assert rows.var().item() == pytest.approx(1 - ab, rel=0.05)


def test_q_posterior_is_the_bayes_posterior() -> None:
    """Regress x_{t-1} on x_t for a fixed x_0: slope coef2, intercept coef1 x_0, residual β̃_t."""
    diffusion = create_diffusion(DiffusionConfig(schedule="linear"))
    n, step, x0 = 40000, 400, 0.3
    gen = torch.Generator().manual_seed(1)
    ab_prev = diffusion.alphas_cumprod[step - 1]
    x_prev = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev) * torch.randn(
        n, 1, generator=gen, dtype=torch.float64
    )
    x_t = np.sqrt(1 - diffusion.betas[step]) * x_prev + np.sqrt(diffusion.betas[step]) * torch.randn(
        n, 1, generator=gen, dtype=torch.float64
    )
    mean, variance, log_variance = diffusion.q_posterior_mean_variance(
        torch.full((n, 1), x0, dtype=torch.float64), x_t, torch.full((n,), step)
    )
    residual = x_prev - mean
    assert residual.mean().item() == pytest.approx(
        0.0, abs=4 * np.sqrt(diffusion.posterior_variance[step] / n)
    )
    assert residual.var().item() == pytest.approx(diffusion.posterior_variance[step], rel=0.03)
    # The residual is uncorrelated with x_t: the mean is the regression, not just any unbiased guess.
    corr = torch.corrcoef(torch.stack([residual[:, 0], x_t[:, 0]]))[0, 1].item()
    assert abs(corr) < 4 / np.sqrt(n)
    assert variance[0, 0].item() == pytest.approx(diffusion.posterior_variance[step], rel=1e-12)
    assert log_variance[0, 0].item() == pytest.approx(np.log(diffusion.posterior_variance[step]), rel=1e-12)


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_parameterisations_agree_on_pred_xstart_and_eps(prediction: str) -> None:
    config = DiffusionConfig(schedule="cosine", prediction=prediction)
    diffusion = create_diffusion(config)
    x = torch.randn(64, 4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.arange(0, 1000, 1000 // 64)[:64]
    out = diffusion.p_mean_variance(
        optimal_model(diffusion.alphas_cumprod, prediction), x, t, clip_denoised=False
    )
    ref = create_diffusion(DiffusionConfig(schedule="cosine")).p_mean_variance(
        optimal_model(diffusion.alphas_cumprod, "epsilon"), x, t, clip_denoised=False
    )
    for key in ("pred_xstart", "eps", "mean"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-8, atol=1e-8)
    assert out["mean"].dtype == torch.float64


def test_clipping_bounds_pred_xstart_and_keeps_eps_consistent() -> None:
    diffusion = create_diffusion(DiffusionConfig())
    x, t = 3 * torch.randn(8, 5, generator=torch.Generator().manual_seed(3)), torch.full((8,), 10)
    out = diffusion.p_mean_variance(lambda x, t: -x, x, t, clip_denoised=True)
    assert out["pred_xstart"].abs().max() <= 1.0
    rebuilt = diffusion._predict_xstart_from_eps(x, t, out["eps"])
    torch.testing.assert_close(rebuilt, out["pred_xstart"], atol=1e-4, rtol=1e-4)


# -- variances --------------------------------------------------------------------------------


def test_fixed_variances() -> None:
    small = create_diffusion(DiffusionConfig(), 50)
    large = GaussianDiffusion(small.betas, ModelMeanType.EPSILON, ModelVarType.FIXED_LARGE)
    x, t = torch.zeros(3, 2, 2), torch.tensor([0, 20, 49])
    out_small = small.p_mean_variance(lambda x, t: x, x, t)
    out_large = large.p_mean_variance(lambda x, t: x, x, t)
    assert out_small["variance"].shape == x.shape
    np.testing.assert_allclose(
        out_small["variance"][:, 0, 0], [0.0, *small.posterior_variance[[20, 49]]], rtol=1e-6
    )
    np.testing.assert_allclose(out_large["variance"][1:, 0, 0], small.betas[[20, 49]], rtol=1e-6)
    # log β̃_0 = -∞ is clipped to log β̃_1 (guided-diffusion).
    assert out_small["log_variance"][0, 0, 0].item() == pytest.approx(
        np.log(small.posterior_variance[1]), rel=1e-6
    )


def test_learned_range_variance_lies_between_posterior_and_beta() -> None:
    diffusion = create_diffusion(DiffusionConfig(learn_sigma=True), 50)
    x = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([1, 5, 10, 20, 30, 40, 45, 49])
    v = 2 * torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(5)) - 1
    out = diffusion.p_mean_variance(lambda x, t: torch.cat([torch.zeros_like(x), v], 1), x, t)
    low = torch.from_numpy(diffusion.posterior_variance[t.numpy()]).float().view(8, 1, 1, 1)
    high = torch.from_numpy(diffusion.betas[t.numpy()]).float().view(8, 1, 1, 1)
    assert out["variance"].shape == x.shape and out["mean"].shape == x.shape
    assert (out["variance"] >= low * (1 - 1e-5)).all() and (out["variance"] <= high * (1 + 1e-5)).all()
    for end, expected in ((-1.0, low), (1.0, high)):
        ends = diffusion.p_mean_variance(
            lambda x, t, e=end: torch.cat([torch.zeros_like(x), torch.full_like(x, e)], 1), x, t
        )
        torch.testing.assert_close(ends["variance"], expected.expand_as(x), rtol=1e-5, atol=0)
    # Geometric interpolation: v = 0 gives √(β̃ β).
    mid = diffusion.p_mean_variance(
        lambda x, t: torch.cat([torch.zeros_like(x), torch.zeros_like(x)], 1), x, t
    )
    torch.testing.assert_close(mid["variance"], (low * high).sqrt().expand_as(x), rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="output channels"):
        diffusion.p_mean_variance(lambda x, t: x, x, t)


# -- training losses ----------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_optimal_denoiser_reaches_the_bayes_error(prediction: str) -> None:
    """The optimal denoiser's mse is the posterior variance of its target, and beats wrong models."""
    diffusion = create_diffusion(DiffusionConfig(schedule="cosine", prediction=prediction))
    n, step = 8192, 300
    x0 = gaussian_data(n, seed=6)
    t = torch.full((n,), step)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    model = optimal_model(diffusion.alphas_cumprod, prediction)
    losses = diffusion.training_losses(model, x0, t, noise=noise)
    assert set(losses) == {"mse", "loss"} and losses["loss"].shape == (n,)
    ab, var = float(diffusion.alphas_cumprod[step]), SIGMA**2
    var_x0 = var * (1 - ab) / (ab * var + 1 - ab)  # Var[x_0 | x_t]
    bayes = (
        {"epsilon": ab * var_x0 / (1 - ab), "x0": var_x0, "v": var_x0 / (1 - ab)}[prediction].mean().item()
    )
    # ~8k samples of a χ²-like per-sample loss: relative standard error ≈ 1%.
    assert losses["mse"].mean().item() == pytest.approx(bayes, rel=0.05)
    zero = diffusion.training_losses(lambda x, t: torch.zeros_like(x), x0, t, noise=noise)["loss"].mean()
    scaled = diffusion.training_losses(lambda x, t: 1.1 * model(x, t), x0, t, noise=noise)["loss"].mean()
    assert zero > 1.05 * losses["loss"].mean() and scaled > losses["loss"].mean()


def test_training_losses_average_over_any_data_shape() -> None:
    diffusion = create_diffusion(DiffusionConfig())
    for shape in ((6, 5), (6, 3, 4, 4)):
        losses = diffusion.training_losses(
            lambda x, t: torch.zeros_like(x), torch.zeros(shape), torch.arange(6)
        )
        assert losses["mse"].shape == (6,)
        noise = torch.ones(shape)
        ones = diffusion.training_losses(
            lambda x, t: torch.zeros_like(x), torch.zeros(shape), torch.arange(6), noise=noise
        )
        torch.testing.assert_close(ones["mse"], torch.ones(6))  # target ε = 1 everywhere


def test_hybrid_loss_vb_prefers_the_exact_variance_and_stops_the_mean_gradient() -> None:
    config = DiffusionConfig(schedule="cosine", learn_sigma=True)
    diffusion = create_diffusion(config)
    n, step = 4096, 200
    x0 = gaussian_data(n, seed=8)
    t = torch.full((n,), step)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(9))
    exact = optimal_model(diffusion.alphas_cumprod, "epsilon", learned_for=diffusion)
    best = diffusion.training_losses(exact, x0, t, noise=noise)
    assert set(best) == {"mse", "vb", "loss"}
    torch.testing.assert_close(best["loss"], best["mse"] + best["vb"])
    for end in (-1.0, 1.0):

        def fixed(x: torch.Tensor, t: torch.Tensor, e: float = end) -> torch.Tensor:
            mean_part = exact(x, t)[:, :4]
            return torch.cat([mean_part, torch.full_like(mean_part, e)], dim=1)

        assert diffusion.training_losses(fixed, x0, t, noise=noise)["vb"].mean() > best["vb"].mean()

    # Stop-gradient: vb reaches the variance channels only; mse reaches the mean channels only.
    mean_scale = torch.tensor(1.0, requires_grad=True)
    var_value = torch.tensor(0.0, requires_grad=True)

    def learnable(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([mean_scale * exact(x, t)[:, :4], var_value.expand_as(x)], dim=1)

    small = diffusion.training_losses(learnable, x0[:64], t[:64], noise=noise[:64])
    small["vb"].mean().backward()
    assert mean_scale.grad is not None and mean_scale.grad.item() == 0.0 and var_value.grad.abs().item() > 0
    mean_scale.grad, var_value.grad = None, None
    small = diffusion.training_losses(learnable, x0[:64], t[:64], noise=noise[:64])
    small["mse"].mean().backward()
    assert mean_scale.grad.abs().item() > 0 and (var_value.grad is None or var_value.grad.item() == 0.0)


def test_vb_is_weighted_by_num_timesteps_over_1000() -> None:
    x0 = gaussian_data(32, seed=10)
    t = torch.full((32,), 5)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(11))

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), torch.zeros_like(x)], 1)

    vb = {}
    for timesteps in (1000, 4000):
        betas = np.full(timesteps, 0.01)
        diffusion = GaussianDiffusion(betas, ModelMeanType.EPSILON, ModelVarType.LEARNED_RANGE)
        vb[timesteps] = diffusion.training_losses(model, x0, t, noise=noise)["vb"]
    torch.testing.assert_close(vb[4000], 4 * vb[1000])


def test_decoder_nll_term_at_t0() -> None:
    """At t = 0 the vb term is the discretised Gaussian NLL of x_0 in bits (Ho et al. eq. 13), not a KL."""
    diffusion = create_diffusion(DiffusionConfig(learn_sigma=True))
    x0 = torch.tensor([[-1.0, 0.0, 1.0]], dtype=torch.float64)

    def perfect(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = (x - diffusion.sqrt_alphas_cumprod[0] * x0) / diffusion.sqrt_one_minus_alphas_cumprod[0]
        return torch.cat([eps, torch.ones_like(x)], dim=1)  # v = 1: σ² = β_0

    vb = diffusion.training_losses(perfect, x0, torch.tensor([0]))["vb"].item()
    # μ_θ = x_0 exactly (coef1 = 1, coef2 = 0 at t = 0); the bin is x_0 ± 1/255, the outer bins
    # extend to ±∞: P = Φ(a) - Φ(-a) at 0, Φ(a) at ±1, a = (1/255)/√β_0.
    a = (1 / 255) / np.sqrt(diffusion.betas[0])
    phi = 0.5 * (1 + math.erf(a / np.sqrt(2)))
    bits = -np.mean(np.log2([phi, 2 * phi - 1, phi]))
    assert vb == pytest.approx(bits * diffusion.num_timesteps / 1000, rel=1e-2)  # tanh approximation of Φ
