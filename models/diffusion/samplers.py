"""Stateless samplers with one signature for every stage (k-diffusion's ``sampling.py``).

Every sampler is ``sampler(model, x, diffusion, *, model_kwargs, callback, noise, clip_denoised)``:

* ``model``: the network as a callable ``model(x, t, **model_kwargs)`` (guidance, if any, is inside it);
* ``x``: the starting state [N x ...] at the diffusion's last index, already noise (x_T from
  :func:`initial_noise`) or a partly noised image (an SDEdit-style start); its dtype is the dtype
  the state is kept in and the network sees, its device the device everything runs on;
* ``diffusion``: the (usually respaced) process, passed in as data; one model call per index;
* ``noise``: the per-row :class:`RowNoise` every stochastic step draws its z from, so a row's
  result depends only on its own seed (unused by deterministic samplers).

Nothing is stored between calls: one worker serves many requests with one set of networks.
:func:`sample` is the one-call entry point: it draws x_T from the rows' seeds and dispatches.

Notation (see :mod:`models.diffusion.gaussian`): the loop visits indices i = S-1, ..., 0 of the
diffusion passed in; ᾱ_i its ``alphas_cumprod``, ᾱ_{i-1} its ``alphas_cumprod_prev`` (1 at i = 0);
x̂_0 and ε̂ come from :meth:`GaussianDiffusion.p_mean_variance` (clipped when ``clip_denoised``).
Each update is computed in at least float32 and cast back to x's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol

import numpy as np
import torch

from models.diffusion.gaussian import GaussianDiffusion, Model
from models.diffusion.noise import RowNoise

SamplerName = Literal["ddpm", "ddim", "dpm++2m"]
# callback(step, total) after each step, step = 1..total (and callback.xstart(x̂_0), if it has one:
# report_step)
Callback = Callable[[int, int], None] | None
# One reverse step: (index i, x_i [N x ...], p_mean_variance's output at i) -> x_{i-1} [N x ...].
Step = Callable[[int, torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


class Sampler(Protocol):
    """The signature every sampler shares (extra options, such as DDIM's ``eta``, come after)."""

    def __call__(
        self,
        model: Model,
        x: torch.Tensor,
        diffusion: GaussianDiffusion,
        *,
        model_kwargs: dict[str, Any] | None = None,
        callback: Callback = None,
        noise: RowNoise | None = None,
        clip_denoised: bool = True,
    ) -> torch.Tensor: ...


def initial_noise(
    shape: tuple[int, ...],
    noise: RowNoise,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """x_T ~ N(0, I) [N x ...] (``shape``), row i the next draw of stream i of ``noise``."""
    if shape[0] != len(noise):
        raise ValueError(f"batch of {shape[0]} rows but {len(noise)} noise streams")
    return noise.randn(tuple(shape[1:]), device, dtype)


def _check_noise(noise: RowNoise | None, x: torch.Tensor, needed: bool, sampler: str) -> None:
    """Stochastic steps need one stream per row of x [N x ...]: refuse before the first model call."""
    if noise is None:
        if needed:
            raise ValueError(f"{sampler} draws noise at its steps: pass noise=RowNoise(seeds)")
    elif len(noise) != x.shape[0]:
        raise ValueError(f"batch of {x.shape[0]} rows but {len(noise)} noise streams")


def _run(
    step: Step,
    model: Model,
    x: torch.Tensor,
    diffusion: GaussianDiffusion,
    model_kwargs: dict[str, Any] | None,
    callback: Callback,
    clip_denoised: bool,
) -> torch.Tensor:
    """The loop every sampler shares: i = S-1..0, one model call and one ``step`` per index.

    :param x: x_{S-1} [N x ...]; kept in its own dtype between steps (what the network sees).
    :return: x_0 [N x ...] in x's dtype and on its device.
    """
    dtype, total = x.dtype, diffusion.num_timesteps
    for done, i in enumerate(reversed(range(total)), start=1):
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)  # [N], every row at i
        out = diffusion.p_mean_variance(model, x, t, clip_denoised, model_kwargs)  # each [N x ...]
        x = step(i, x, out).to(dtype)  # [N x ...]
        report_step(callback, done, total, out["pred_xstart"])
    return x


def report_step(callback: Callback, done: int, total: int, pred_xstart: torch.Tensor) -> None:
    """Tell ``callback`` that step ``done`` of ``total`` is done. A callback that also has an
    ``xstart`` method (a live preview) is handed the step's x̂_0 [N x ...] as well, by reference,
    never copied; plain functions get (step, total) only."""
    if callback is None:
        return
    callback(done, total)
    xstart = getattr(callback, "xstart", None)
    if xstart is not None:
        xstart(pred_xstart)


# -- DDPM ---------------------------------------------------------------------------------------


def ddpm_step(i: int, out: dict[str, torch.Tensor], noise: RowNoise) -> torch.Tensor:
    """Ancestral step (Ho et al. 2020, Algorithm 2), with the diffusion's variance type.

    1. μ_θ(x_i, i), σ_i² from p_mean_variance (``out``)   (eq. 11 via the posterior mean, eq. 7)
    2. x_{i-1} = μ_θ + σ_i z, z ~ N(0, I) [N x ...]; no noise at i = 0 ("if t > 1 ... else z = 0")
    """
    x_prev = out["mean"]  # 1.
    if i > 0:  # 2.
        z = noise.randn(tuple(x_prev.shape[1:]), x_prev.device, x_prev.dtype)  # [N x ...]
        x_prev = x_prev + torch.exp(0.5 * out["log_variance"]) * z
    return x_prev


@torch.no_grad()
def ddpm_sample_loop(
    model: Model,
    x: torch.Tensor,
    diffusion: GaussianDiffusion,
    *,
    model_kwargs: dict[str, Any] | None = None,
    callback: Callback = None,
    noise: RowNoise | None = None,
    clip_denoised: bool = True,
) -> torch.Tensor:
    """DDPM from x [N x ...] to x_0 [N x ...]; ``noise`` (one stream per row) is required."""
    _check_noise(noise, x, needed=True, sampler="ddpm")
    assert noise is not None  # for mypy: _check_noise refused None

    def step(i: int, _: torch.Tensor, out: dict[str, torch.Tensor]) -> torch.Tensor:
        return ddpm_step(i, out, noise)

    return _run(step, model, x, diffusion, model_kwargs, callback, clip_denoised)


# -- DDIM ---------------------------------------------------------------------------------------


def ddim_step(
    diffusion: GaussianDiffusion, i: int, out: dict[str, torch.Tensor], eta: float, noise: RowNoise | None
) -> torch.Tensor:
    """DDIM step (Song et al. 2021, eq. 12 and 16); η = 0 is deterministic, η = 1 has DDPM's β̃.

    1. x̂_0, ε̂ at i from ``out``                           ("predicted x_0" of eq. 12)
    2. σ_i = η √((1-ᾱ_{i-1})/(1-ᾱ_i)) √(1 - ᾱ_i/ᾱ_{i-1})    (eq. 16)
    3. x_{i-1} = √ᾱ_{i-1} x̂_0 + √(1 - ᾱ_{i-1} - σ_i²) ε̂ + σ_i z   (eq. 12; at i = 0, x̂_0 itself)
    """
    # Every row is at the same index i, so the coefficients are scalars (float64 here).
    alpha_bar, alpha_bar_prev = diffusion.alphas_cumprod[i], diffusion.alphas_cumprod_prev[i]
    sigma = eta * np.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev))  # 2.
    direction = float(np.sqrt(max(1 - alpha_bar_prev - sigma**2, 0.0))) * out["eps"]  # [N x ...]
    x_prev = float(np.sqrt(alpha_bar_prev)) * out["pred_xstart"] + direction  # 3. [N x ...]
    if i > 0 and eta > 0:
        assert noise is not None  # ddim_sample_loop refuses η > 0 without noise
        x_prev = x_prev + float(sigma) * noise.randn(tuple(x_prev.shape[1:]), x_prev.device, x_prev.dtype)
    return x_prev


@torch.no_grad()
def ddim_sample_loop(
    model: Model,
    x: torch.Tensor,
    diffusion: GaussianDiffusion,
    *,
    model_kwargs: dict[str, Any] | None = None,
    callback: Callback = None,
    noise: RowNoise | None = None,
    clip_denoised: bool = True,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM from x [N x ...] to x_0 [N x ...]; ``noise`` is required only when η > 0.

    Starting from a partly noised image instead of x_T continues the chain from there (SDEdit's
    start; ``models.evaluation.shape_probe``): pass the diffusion of the steps left to run.
    """
    _check_noise(noise, x, needed=eta > 0, sampler=f"ddim with eta={eta}")

    def step(i: int, _: torch.Tensor, out: dict[str, torch.Tensor]) -> torch.Tensor:
        return ddim_step(diffusion, i, out, eta, noise)

    return _run(step, model, x, diffusion, model_kwargs, callback, clip_denoised)


# -- DPM-Solver++(2M) ---------------------------------------------------------------------------


class Dpmpp2mStep:
    """DPM-Solver++(2M) steps (Lu et al. 2022, "DPM-Solver++", Algorithm 2): multistep, data
    prediction, in log-SNR over the diffusion's discrete steps. One instance per sampling run: it
    keeps the previous step's x̂_0 and h (the multistep memory).

    With α_i = √ᾱ_i, σ_i = √(1-ᾱ_i), λ_i = log(α_i/σ_i), and for the step i → i-1:
    1. x̂_0(i) from p_mean_variance; h_i = λ_{i-1} - λ_i
    2. first step: D_i = x̂_0(i) (first order, = DDIM η=0); later: r_i = h_{i+1}/h_i,
       D_i = (1 + 1/(2r_i)) x̂_0(i) - 1/(2r_i) x̂_0(i+1)
    3. x_{i-1} = (σ_{i-1}/σ_i) x_i - α_{i-1} (e^{-h_i} - 1) D_i      (Algorithm 2, line 7)
    4. the last step (i = 0 → λ = +∞, σ = 0) returns the denoised x̂_0(0).
    """

    def __init__(self, diffusion: GaussianDiffusion):
        self.alpha = np.sqrt(diffusion.alphas_cumprod)  # [S], float64
        self.sigma = np.sqrt(1.0 - diffusion.alphas_cumprod)  # [S]
        self.lam = np.log(self.alpha) - np.log(self.sigma)  # [S], increasing as i decreases
        self.previous: tuple[torch.Tensor, float] | None = None  # (x̂_0(i+1), h_{i+1})

    def __call__(self, i: int, x: torch.Tensor, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """x_i [N x ...] → x_{i-1} [N x ...] in the dtype of x̂_0 (at least float32)."""
        pred_xstart = out["pred_xstart"]  # 1. [N x ...]
        if i == 0:
            return pred_xstart  # 4.
        h = float(self.lam[i - 1] - self.lam[i])
        if self.previous is None:  # 2.
            denoised = pred_xstart
        else:
            r = self.previous[1] / h
            denoised = (1 + 1 / (2 * r)) * pred_xstart - (1 / (2 * r)) * self.previous[0]
        self.previous = (pred_xstart, h)
        return (  # 3.
            float(self.sigma[i - 1] / self.sigma[i]) * x.to(pred_xstart.dtype)
            - float(self.alpha[i - 1] * np.expm1(-h)) * denoised
        )


@torch.no_grad()
def dpmpp_2m_sample_loop(
    model: Model,
    x: torch.Tensor,
    diffusion: GaussianDiffusion,
    *,
    model_kwargs: dict[str, Any] | None = None,
    callback: Callback = None,
    noise: RowNoise | None = None,
    clip_denoised: bool = True,
) -> torch.Tensor:
    """DPM-Solver++(2M) from x [N x ...] to x_0 [N x ...]; deterministic, so ``noise`` is unused
    (only checked against x's rows when given)."""
    _check_noise(noise, x, needed=False, sampler="dpm++2m")
    return _run(Dpmpp2mStep(diffusion), model, x, diffusion, model_kwargs, callback, clip_denoised)


SAMPLERS: dict[str, Sampler] = {
    "ddpm": ddpm_sample_loop,
    "ddim": ddim_sample_loop,
    "dpm++2m": dpmpp_2m_sample_loop,
}


def sample(
    sampler: SamplerName,
    model: Model,
    shape: tuple[int, ...],
    diffusion: GaussianDiffusion,
    noise: RowNoise,
    *,
    model_kwargs: dict[str, Any] | None = None,
    callback: Callback = None,
    clip_denoised: bool = True,
    eta: float = 0.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw x_T from ``noise`` (:func:`initial_noise`) and run ``sampler`` down to x_0.

    :param sampler: "ddpm", "ddim" or "dpm++2m".
    :param model: ``model(x, t, **model_kwargs)`` with t the original timesteps, LongTensor [N].
    :param shape: [N x ...], N == len(noise).
    :param diffusion: the process to sample (typically ``models.factory.create_diffusion(cfg,
        steps)``); one model call per index, so ``diffusion.num_timesteps`` calls.
    :param noise: one stream per row: x_T first, then each stochastic step's z.
    :param callback: called as ``callback(step, total)`` after each step, step = 1..total.
    :param eta: DDIM's η; only "ddim" takes it (DDPM is stochastic, DPM-Solver++(2M) deterministic).
    :param device: where x lives (None: the CPU). :param dtype: the dtype of x.
    :return: x_0 [N x ...] in ``dtype`` on ``device``.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known: {sorted(SAMPLERS)}")
    if sampler != "ddim" and eta != 0.0:
        raise ValueError(f"eta applies to the ddim sampler only, got eta={eta} for {sampler!r}")
    x = initial_noise(tuple(shape), noise, device, dtype)  # x_T [N x ...]
    kwargs: dict[str, Any] = {"eta": eta} if sampler == "ddim" else {}
    return SAMPLERS[sampler](
        model,
        x,
        diffusion,
        model_kwargs=model_kwargs,
        callback=callback,
        noise=noise,
        clip_denoised=clip_denoised,
        **kwargs,
    )
