"""Stateless samplers with one signature for every stage (k-diffusion's ``sampling.py`` idea).

Each takes the (usually respaced) diffusion as data, the model as a callable, the batch shape
[N x ...] and a :class:`RowNoise` from which every stochastic draw is taken (x_T, then each step's
z), so a row's result depends only on its own seed. Nothing is stored between calls: one worker
serves many requests with one set of networks. Guidance, if any, is inside ``model``.

Notation (see :mod:`models.diffusion.gaussian`): the loop visits indices i = S-1, ..., 0 of the
diffusion passed in; ᾱ_i its ``alphas_cumprod``, ᾱ_{i-1} its ``alphas_cumprod_prev`` (1 at i = 0);
x̂_0 and ε̂ come from :meth:`GaussianDiffusion.p_mean_variance` (clipped when ``clip_denoised``).
The state x is kept in ``dtype`` (what the network sees); each update is computed in at least
float32 and cast back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import torch

from models.diffusion.gaussian import GaussianDiffusion, Model
from models.diffusion.noise import RowNoise

SamplerName = Literal["ddpm", "ddim", "dpm++2m"]
Progress = Callable[[int, int], None] | None


def _start(
    shape: tuple[int, ...], noise: RowNoise, device: torch.device | str | None, dtype: torch.dtype
) -> torch.Tensor:
    """x_T ~ N(0, I) [N x ...], row i from stream i."""
    if shape[0] != len(noise):
        raise ValueError(f"batch of {shape[0]} rows but {len(noise)} noise streams")
    return noise.randn(tuple(shape[1:]), device, dtype)


def _indices(diffusion: GaussianDiffusion, x: torch.Tensor) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(step 1..S, index i = S-1..0, t = LongTensor [N] filled with i)."""
    for step, i in enumerate(reversed(range(diffusion.num_timesteps)), start=1):
        yield step, i, torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)


def _report(progress: Progress, step: int, total: int) -> None:
    if progress is not None:
        progress(step, total)


@torch.no_grad()
def ddpm_sample_loop(
    diffusion: GaussianDiffusion,
    model: Model,
    shape: tuple[int, ...],
    noise: RowNoise,
    *,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = True,
    progress: Progress = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2), with the diffusion's variance type
    (fixed β̃ / β, or learned range).

    1. μ_θ(x_i, i), σ_i² from p_mean_variance          (eq. 11 via the posterior mean, eq. 7)
    2. x_{i-1} = μ_θ + σ_i z, z ~ N(0, I); no noise at i = 0 ("if t > 1 ... else z = 0")
    """
    x = _start(shape, noise, device, dtype)  # [N x ...]
    total = diffusion.num_timesteps
    for step, i, t in _indices(diffusion, x):
        out = diffusion.p_mean_variance(model, x, t, clip_denoised, model_kwargs)  # 1.
        x_prev = out["mean"]
        if i > 0:  # 2.
            z = noise.randn(tuple(shape[1:]), x.device, x_prev.dtype)  # [N x ...]
            x_prev = x_prev + torch.exp(0.5 * out["log_variance"]) * z
        x = x_prev.to(dtype)
        _report(progress, step, total)
    return x


@torch.no_grad()
def ddim_sample_loop(
    diffusion: GaussianDiffusion,
    model: Model,
    shape: tuple[int, ...],
    noise: RowNoise,
    *,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = True,
    eta: float = 0.0,
    progress: Progress = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    x_init: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12 and 16); η = 0 is deterministic, η = 1 has DDPM's β̃ variance.

    ``x_init`` [N x ...] starts the chain at the diffusion's last index from that (partly noised)
    image instead of x_T drawn from ``noise`` (SDEdit's start; ``models.evaluation.shape_probe``).

    1. x̂_0, ε̂ at i                                       ("predicted x_0" of eq. 12)
    2. σ_i = η √((1-ᾱ_{i-1})/(1-ᾱ_i)) √(1 - ᾱ_i/ᾱ_{i-1})    (eq. 16)
    3. x_{i-1} = √ᾱ_{i-1} x̂_0 + √(1 - ᾱ_{i-1} - σ_i²) ε̂ + σ_i z   (eq. 12; at i = 0, x̂_0 itself)
    """
    x = _start(shape, noise, device, dtype) if x_init is None else x_init.to(device, dtype)  # [N x ...]
    total = diffusion.num_timesteps
    for step, i, t in _indices(diffusion, x):
        out = diffusion.p_mean_variance(model, x, t, clip_denoised, model_kwargs)  # 1.
        # Every row is at the same index i, so the coefficients are scalars (float64 here).
        alpha_bar, alpha_bar_prev = diffusion.alphas_cumprod[i], diffusion.alphas_cumprod_prev[i]
        sigma = eta * np.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev))  # 2.
        direction = float(np.sqrt(max(1 - alpha_bar_prev - sigma**2, 0.0))) * out["eps"]
        x_prev = float(np.sqrt(alpha_bar_prev)) * out["pred_xstart"] + direction  # 3.
        if i > 0 and eta > 0:
            x_prev = x_prev + float(sigma) * noise.randn(tuple(shape[1:]), x.device, x_prev.dtype)
        x = x_prev.to(dtype)
        _report(progress, step, total)
    return x


@torch.no_grad()
def dpmpp_2m_sample_loop(
    diffusion: GaussianDiffusion,
    model: Model,
    shape: tuple[int, ...],
    noise: RowNoise,
    *,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = True,
    progress: Progress = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): multistep, data prediction,
    in log-SNR over the diffusion's discrete steps. Only x_T is random.

    With α_i = √ᾱ_i, σ_i = √(1-ᾱ_i), λ_i = log(α_i/σ_i), and for the step i → i-1:
    1. x̂_0(i) from p_mean_variance; h_i = λ_{i-1} - λ_i
    2. first step: D_i = x̂_0(i) (first order, = DDIM η=0); later: r_i = h_{i+1}/h_i,
       D_i = (1 + 1/(2r_i)) x̂_0(i) - 1/(2r_i) x̂_0(i+1)
    3. x_{i-1} = (σ_{i-1}/σ_i) x_i - α_{i-1} (e^{-h_i} - 1) D_i      (Algorithm 2, line 7)
    4. the last step (i = 0 → λ = +∞, σ = 0) returns the denoised x̂_0(0).
    """
    x = _start(shape, noise, device, dtype)  # [N x ...]
    alpha = np.sqrt(diffusion.alphas_cumprod)
    sigma = np.sqrt(1.0 - diffusion.alphas_cumprod)
    lam = np.log(alpha) - np.log(sigma)  # increasing as i decreases
    total = diffusion.num_timesteps
    previous: tuple[torch.Tensor, float] | None = None  # (x̂_0(i+1), h_{i+1})
    for step, i, t in _indices(diffusion, x):
        pred_xstart = diffusion.p_mean_variance(model, x, t, clip_denoised, model_kwargs)["pred_xstart"]  # 1.
        if i == 0:
            x = pred_xstart.to(dtype)  # 4.
            _report(progress, step, total)
            break
        h = float(lam[i - 1] - lam[i])
        if previous is None:  # 2.
            denoised = pred_xstart
        else:
            r = previous[1] / h
            denoised = (1 + 1 / (2 * r)) * pred_xstart - (1 / (2 * r)) * previous[0]
        x_prev = (
            float(sigma[i - 1] / sigma[i]) * x.to(pred_xstart.dtype)
            - float(alpha[i - 1] * np.expm1(-h)) * denoised
        )
        x = x_prev.to(dtype)  # 3.
        previous = (pred_xstart, h)
        _report(progress, step, total)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": ddpm_sample_loop,
    "ddim": ddim_sample_loop,
    "dpm++2m": dpmpp_2m_sample_loop,
}


def sample(
    sampler: SamplerName,
    diffusion: GaussianDiffusion,
    model: Model,
    shape: tuple[int, ...],
    noise: RowNoise,
    *,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = True,
    eta: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw x_T from ``noise`` and run ``sampler`` down to x_0.

    :param sampler: "ddpm", "ddim" or "dpm++2m".
    :param diffusion: the process to sample (typically ``create_diffusion(cfg, steps)``); one model
        call per index, so ``diffusion.num_timesteps`` calls.
    :param model: ``model(x, t, **model_kwargs)`` with t the original timesteps, LongTensor [N].
    :param shape: [N x ...], N == len(noise).
    :param eta: DDIM's η; only "ddim" takes it (DDPM is stochastic, DPM-Solver++(2M) deterministic).
    :param progress: called as ``progress(step, total)`` after each step, step = 1..total.
    :param device: where x lives (None: the CPU). :param dtype: the dtype of x.
    :return: x_0 [N x ...] in ``dtype`` on ``device``.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known: {sorted(SAMPLERS)}")
    kwargs: dict[str, Any] = dict(
        model_kwargs=model_kwargs, clip_denoised=clip_denoised, progress=progress, device=device, dtype=dtype
    )
    if sampler == "ddim":
        kwargs["eta"] = eta
    elif eta != 0.0:
        raise ValueError(f"eta applies to the ddim sampler only, got eta={eta} for {sampler!r}")
    return SAMPLERS[sampler](diffusion, model, tuple(shape), noise, **kwargs)
