"""Sampling that starts from, or keeps to, a given image: DDIM inversion and masked (RePaint) sampling.

Both see the network only as ``model(x, t, **model_kwargs)`` and the process as data, like the
samplers (:mod:`models.diffusion.samplers`), and use the same per-row noise streams, so a row's
result depends only on its own seed.

Notation: the loops visit indices of the (usually respaced) diffusion passed in; ᾱ_i its
``alphas_cumprod``, ᾱ_{i-1} its ``alphas_cumprod_prev`` (1 at i = 0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from models.diffusion.gaussian import GaussianDiffusion, Model
from models.diffusion.noise import RowNoise
from models.diffusion.samplers import Callback, ddim_step, ddpm_step, report_step

# One reverse step of a sampler: (index i, p_mean_variance's output at i) -> x_{i-1} [N x ...].
MaskedStep = Callable[[int, dict[str, torch.Tensor]], torch.Tensor]


@torch.no_grad()
def ddim_invert(
    model: Model,
    x0: torch.Tensor,
    diffusion: GaussianDiffusion,
    *,
    model_kwargs: dict[str, Any] | None = None,
    callback: Callback = None,
    clip_denoised: bool = True,
) -> torch.Tensor:
    """Run DDIM (η = 0) backwards from a clean image to its latent x_{S-1} (Song et al. 2021, §4.3:
    the η = 0 ODE can be integrated in either direction; Ramesh et al. 2022 §3.1 invert the decoder
    this way to make variations that keep the source's layout).

    For i = 0 .. S-1, with x the state at the level of index i-1 (x_0 itself at i = 0):
    1. x̂_0, ε̂ from p_mean_variance at index max(i-1, 0) (the network's estimate at x's level)
    2. x_i = √ᾱ_i x̂_0 + √(1 - ᾱ_i) ε̂                       (eq. 12 with σ = 0, run forwards)

    :param x0: clean images [N x C x H x W] in [-1, 1].
    :return: x_{S-1} [N x C x H x W] float32: sampling DDIM η = 0 from it with the same model,
        kwargs and diffusion gives x0 back up to the discretisation error.
    """
    x = x0.float()  # [N x C x H x W]
    total = diffusion.num_timesteps
    for i in range(total):
        t = torch.full((x.shape[0],), max(i - 1, 0), dtype=torch.long, device=x.device)  # [N]
        out = diffusion.p_mean_variance(model, x, t, clip_denoised, model_kwargs)  # 1.
        alpha_bar = float(diffusion.alphas_cumprod[i])
        x = np.sqrt(alpha_bar) * out["pred_xstart"] + np.sqrt(1 - alpha_bar) * out["eps"]  # 2.
        if callback is not None:
            callback(i + 1, total)
    return x


def masked_step(sampler: str, diffusion: GaussianDiffusion, noise: RowNoise, eta: float = 0.0) -> MaskedStep:
    """The sampler's reverse step for masked sampling. DPM-Solver++(2M) keeps a multistep memory
    that RePaint's back-and-forth would corrupt, so it is replaced by DDIM (η = 0), its first-order
    twin; DDPM and DDIM are used as they are."""
    if sampler == "ddpm":
        return lambda i, out: ddpm_step(i, out, noise)
    step_eta = eta if sampler == "ddim" else 0.0
    return lambda i, out: ddim_step(diffusion, i, out, step_eta, noise)


@torch.no_grad()
def repaint_sample_loop(
    model: Model,
    x: torch.Tensor,
    diffusion: GaussianDiffusion,
    step: MaskedStep,
    *,
    known: torch.Tensor,
    mask: torch.Tensor,
    noise: RowNoise,
    resample: int = 1,
    model_kwargs: dict[str, Any] | None = None,
    callback: Callback = None,
    clip_denoised: bool = True,
) -> torch.Tensor:
    """Masked sampling (Lugmayr et al. 2022, "RePaint", Algorithm 1): the region to repaint is
    sampled, the rest is the known image noised to the current level, pasted at every step.

    For each index i = S-1 .. 0, ``resample`` times:
    1. unknown part: x_{i-1}^u = step(i, p_mean_variance(x_i))
    2. known part: x_{i-1}^k = q_sample(known, i-1) (the known image itself at i = 0)
    3. x_{i-1} = m ⊙ x_{i-1}^u + (1 - m) ⊙ x_{i-1}^k          (m = 1 where to repaint)
    4. unless last: back to level i, x_i = √(ᾱ_i/ᾱ_{i-1}) x_{i-1} + √(1 - ᾱ_i/ᾱ_{i-1}) z
       (one forward step, so the two parts are harmonised by the next pass)

    :param x: the start at the last index [N x C x H x W] (noise: x_T).
    :param known: the source image [N x C x H x W] in [-1, 1]; :param mask: [N x 1 x H x W] in {0, 1}.
    :param noise: one stream per row; every draw (q_sample's ε, step 4's z, stochastic steps) comes
        from it. :return: x_0 [N x C x H x W] float32.
    """
    if resample < 1:
        raise ValueError("resample must be >= 1")
    mask = mask.to(x.device, torch.float32)  # [N x 1 x H x W]
    known = known.to(x.device, torch.float32)  # [N x C x H x W]
    x = x.float()
    total = diffusion.num_timesteps
    row_shape = tuple(x.shape[1:])
    for done, i in enumerate(reversed(range(total)), start=1):
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)  # [N]
        for r in range(resample):
            out = diffusion.p_mean_variance(model, x, t, clip_denoised, model_kwargs)
            unknown = step(i, out).float()  # 1. [N x C x H x W]
            if i > 0:  # 2.
                eps = noise.randn(row_shape, x.device)  # [N x C x H x W]
                known_prev = diffusion.q_sample(known, t - 1, eps)
            else:
                known_prev = known
            x_prev = mask * unknown + (1 - mask) * known_prev  # 3.
            if r < resample - 1 and i > 0:  # 4.
                alpha = float(diffusion.alphas_cumprod[i] / diffusion.alphas_cumprod_prev[i])
                z = noise.randn(row_shape, x.device)
                x = np.sqrt(alpha) * x_prev + np.sqrt(1 - alpha) * z
        x = x_prev
        report_step(callback, done, total, mask * out["pred_xstart"] + (1 - mask) * known)
    return x
