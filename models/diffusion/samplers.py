"""Stateless samplers with one signature for every stage (k-diffusion's ``sampling.py`` idea).

Each takes the (usually respaced) diffusion as data, the model as a callable, the batch shape
and a :class:`RowNoise` from which every stochastic draw is taken. Nothing is stored between
calls, so one worker serves many requests with one set of networks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch

from models.diffusion.gaussian import GaussianDiffusion, Model, _extract_into_tensor
from models.diffusion.noise import RowNoise

SamplerName = Literal["ddpm", "ddim", "dpm++2m"]
Progress = Callable[[int, int], None] | None


def _timesteps(diffusion: GaussianDiffusion, n: int, device: torch.device | None):
    for i in reversed(range(diffusion.num_timesteps)):
        yield i, torch.full((n,), i, dtype=torch.long, device=device)


def _report(progress: Progress, step: int, total: int) -> None:
    if progress is not None:
        progress(step, total)


@torch.no_grad()
def ddpm_sample_loop(
    diffusion: GaussianDiffusion,
    model: Model,
    x: torch.Tensor,
    noise: RowNoise,
    *,
    model_kwargs: dict[str, Any],
    clip_denoised: bool,
    eta: float,
    progress: Progress,
) -> torch.Tensor:
    """Ancestral sampling: x_{t-1} = μ_θ(x_t, t) + σ_t z, z ~ N(0, I) (Ho et al. 2020, Alg. 2)."""
    total = diffusion.num_timesteps
    for step, (i, t) in enumerate(_timesteps(diffusion, len(x), x.device), start=1):
        out = diffusion.p_mean_variance(model, x, t, clip_denoised, model_kwargs)
        if i > 0:  # no noise is added on the last step
            z = noise.randn(tuple(x.shape[1:]), x.device)
            x = out["mean"] + torch.exp(0.5 * out["log_variance"]) * z
        else:
            x = out["mean"]
        _report(progress, step, total)
    return x


@torch.no_grad()
def ddim_sample_loop(
    diffusion: GaussianDiffusion,
    model: Model,
    x: torch.Tensor,
    noise: RowNoise,
    *,
    model_kwargs: dict[str, Any],
    clip_denoised: bool,
    eta: float,
    progress: Progress,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12); η = 0 is deterministic, η = 1 matches DDPM's variance.

    1. predict x̂_0 and ε̂ at t
    2. σ_t = η √((1-ᾱ_{t-1})/(1-ᾱ_t)) √(1 - ᾱ_t/ᾱ_{t-1})
    3. x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1 - ᾱ_{t-1} - σ_t²) ε̂ + σ_t z
    """
    total = diffusion.num_timesteps
    shape = tuple(x.shape)
    for step, (i, t) in enumerate(_timesteps(diffusion, len(x), x.device), start=1):
        out = diffusion.p_mean_variance(model, x, t, clip_denoised, model_kwargs)
        alpha_bar = _extract_into_tensor(diffusion.alphas_cumprod, t, shape)
        alpha_bar_prev = _extract_into_tensor(diffusion.alphas_cumprod_prev, t, shape)
        sigma = (
            eta
            * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
            * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        )
        x = (
            out["pred_xstart"] * torch.sqrt(alpha_bar_prev)
            + torch.sqrt(1 - alpha_bar_prev - sigma**2) * out["eps"]
        )
        if i > 0 and eta > 0:
            x = x + sigma * noise.randn(shape[1:], x.device)
        _report(progress, step, total)
    return x


@torch.no_grad()
def dpmpp_2m_sample_loop(
    diffusion: GaussianDiffusion,
    model: Model,
    x: torch.Tensor,
    noise: RowNoise,
    *,
    model_kwargs: dict[str, Any],
    clip_denoised: bool,
    eta: float,
    progress: Progress,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), data prediction, over the discrete steps.

    With α_t = √ᾱ_t, σ_t = √(1-ᾱ_t), λ_t = log(α_t/σ_t), h = λ_t - λ_s for a step s → t:
    1. D = x̂_0(s) on the first step; else D = (1 + 1/(2r)) x̂_0(s) - 1/(2r) x̂_0(s_prev), r = h_prev/h
    2. x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) D
    The last step (at the smallest kept timestep) returns x̂_0 itself.
    """
    alpha = np.sqrt(diffusion.alphas_cumprod)
    sigma = np.sqrt(1.0 - diffusion.alphas_cumprod)
    lam = np.log(alpha) - np.log(sigma)
    total = diffusion.num_timesteps
    old_x0: torch.Tensor | None = None
    h_prev = 0.0
    for step, (i, t) in enumerate(_timesteps(diffusion, len(x), x.device), start=1):
        x0 = diffusion.p_mean_variance(model, x, t, clip_denoised, model_kwargs)["pred_xstart"]
        if i == 0:
            x = x0
        else:
            h = float(lam[i - 1] - lam[i])
            if old_x0 is None:
                d = x0
            else:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * old_x0
            x = float(sigma[i - 1] / sigma[i]) * x - float(alpha[i - 1] * np.expm1(-h)) * d
            old_x0, h_prev = x0, h
        _report(progress, step, total)
    return x


SAMPLERS = {"ddpm": ddpm_sample_loop, "ddim": ddim_sample_loop, "dpm++2m": dpmpp_2m_sample_loop}


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
    progress: Progress = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw x_T from ``noise`` and run ``sampler`` down to x_0. ``shape`` is [N x ...], N = len(noise)."""
    if shape[0] != len(noise):
        raise ValueError(f"batch of {shape[0]} rows but {len(noise)} noise streams")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known: {sorted(SAMPLERS)}")
    x = noise.randn(tuple(shape[1:]), device, dtype)
    return SAMPLERS[sampler](
        diffusion,
        model,
        x,
        noise,
        model_kwargs=model_kwargs or {},
        clip_denoised=clip_denoised,
        eta=eta,
        progress=progress,
    )
