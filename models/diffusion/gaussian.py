"""Gaussian diffusion: the forward process, the reverse-step statistics, and the training losses.

Notation (Ho et al. 2020; Nichol & Dhariwal 2021): β_t noise schedule, α_t = 1 - β_t,
ᾱ_t = ∏ α_s, x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε. The network is only a callable
``model(x_t, t, **model_kwargs)``; conditioning passes through ``model_kwargs`` untouched. Works
for any data shape [N x ...]: the prior diffuses vectors, the decoder images.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from models.configs import DiffusionConfig
from models.diffusion.schedules import get_named_beta_schedule

Model = Callable[..., torch.Tensor]


class ModelMeanType(enum.Enum):
    EPSILON = "epsilon"  # the network predicts ε
    START_X = "x0"  # the network predicts x_0 (the paper's prior)
    V = "v"  # v = √ᾱ ε - √(1-ᾱ) x_0 (Salimans & Ho 2022)


class ModelVarType(enum.Enum):
    FIXED_SMALL = "fixed_small"  # σ² = β̃_t, the posterior variance
    FIXED_LARGE = "fixed_large"  # σ² = β_t
    LEARNED_RANGE = "learned_range"  # log σ² = v log β_t + (1 - v) log β̃_t, v from the network


def _extract_into_tensor(arr: np.ndarray, timesteps: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Gather ``arr[t]`` per batch row (float64 constants, cast once) and broadcast to ``shape``."""
    values = torch.from_numpy(arr).to(device=timesteps.device)[timesteps].float()
    return values.view(-1, *([1] * (len(shape) - 1))).expand(shape)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.dim())))


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log p(x) of data in [-1, 1] quantised to 256 bins under N(means, e^(2 log_scales))."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log((cdf_plus - cdf_min).clamp(min=1e-12))),
    )
    return log_probs


class GaussianDiffusion:
    """Schedule constants (float64, computed once) and the maths that uses them.

    ``timestep_map[i]`` is the original timestep the network sees at index i; it is the
    identity here and a subsequence for a respaced process (:mod:`models.diffusion.respace`).
    """

    def __init__(self, betas: np.ndarray, mean_type: ModelMeanType, var_type: ModelVarType):
        betas = np.asarray(betas, dtype=np.float64)
        assert betas.ndim == 1 and (betas > 0).all() and (betas <= 1).all()
        self.betas = betas
        self.mean_type = mean_type
        self.var_type = var_type
        self.num_timesteps = len(betas)
        self.timestep_map = np.arange(self.num_timesteps)

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, β̃_t)   (Ho et al. eq. 6-7)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # β̃ at the first kept step is 0, so its log is clipped to the next one (guided-diffusion);
        # a one-step process never adds noise, so any finite value serves there.
        variance = self.posterior_variance
        clipped = np.append(variance[1], variance[1:]) if len(variance) > 1 else np.maximum(variance, 1e-20)
        self.posterior_log_variance_clipped = np.log(clipped)
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )

    # -- forward process ----------------------------------------------------------------------
    def q_sample(
        self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I)."""
        noise = torch.randn_like(x_start) if noise is None else noise
        shape = tuple(x_start.shape)
        return (
            _extract_into_tensor(self.sqrt_alphas_cumprod, t, shape) * x_start
            + _extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, shape) * noise
        )

    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        shape = tuple(x_t.shape)
        mean = (
            _extract_into_tensor(self.posterior_mean_coef1, t, shape) * x_start
            + _extract_into_tensor(self.posterior_mean_coef2, t, shape) * x_t
        )
        variance = _extract_into_tensor(self.posterior_variance, t, shape)
        log_variance = _extract_into_tensor(self.posterior_log_variance_clipped, t, shape)
        return mean, variance, log_variance

    # -- parameterisations --------------------------------------------------------------------
    def _predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        shape = tuple(x_t.shape)
        return (
            _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, shape) * x_t
            - _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, shape) * eps
        )

    def _predict_eps_from_xstart(
        self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor
    ) -> torch.Tensor:
        shape = tuple(x_t.shape)
        return (
            _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, shape) * x_t - pred_xstart
        ) / _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, shape)

    def _predict_xstart_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        shape = tuple(x_t.shape)
        return (
            _extract_into_tensor(self.sqrt_alphas_cumprod, t, shape) * x_t
            - _extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, shape) * v
        )

    def v_target(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        shape = tuple(x_start.shape)
        return (
            _extract_into_tensor(self.sqrt_alphas_cumprod, t, shape) * noise
            - _extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, shape) * x_start
        )

    def call_model(
        self, model: Model, x: torch.Tensor, t: torch.Tensor, model_kwargs: dict[str, Any] | None
    ) -> torch.Tensor:
        """Run the network at the ORIGINAL timesteps of index ``t`` (respacing keeps the network)."""
        original = torch.from_numpy(self.timestep_map).to(t.device)[t]
        return model(x, original, **(model_kwargs or {}))

    # -- reverse process ----------------------------------------------------------------------
    def p_mean_variance(
        self,
        model: Model,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        model_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t): mean, variance, log_variance, and the implied pred_xstart and eps."""
        shape = tuple(x.shape)
        output = self.call_model(model, x, t, model_kwargs)
        if self.var_type == ModelVarType.LEARNED_RANGE:
            output, var_values = output.split(x.shape[1], dim=1)
            # Interpolate log σ² between β̃_t (min) and β_t (max) (Nichol & Dhariwal eq. 15).
            min_log = _extract_into_tensor(self.posterior_log_variance_clipped, t, shape)
            max_log = _extract_into_tensor(np.log(self.betas), t, shape)
            frac = (var_values.float() + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            if self.var_type == ModelVarType.FIXED_LARGE:
                fixed = np.append(self.posterior_variance[1], self.betas[1:])
            else:
                fixed = self.posterior_variance
            variance = _extract_into_tensor(fixed, t, shape)
            log_variance = _extract_into_tensor(np.log(np.maximum(fixed, 1e-20)), t, shape)
            if self.var_type == ModelVarType.FIXED_SMALL:
                log_variance = _extract_into_tensor(self.posterior_log_variance_clipped, t, shape)

        if self.mean_type == ModelMeanType.EPSILON:
            pred_xstart = self._predict_xstart_from_eps(x, t, output)
        elif self.mean_type == ModelMeanType.V:
            pred_xstart = self._predict_xstart_from_v(x, t, output)
        else:
            pred_xstart = output
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        eps = self._predict_eps_from_xstart(x, t, pred_xstart)
        return {
            "mean": mean,
            "variance": variance,
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "eps": eps,
        }

    # -- training -----------------------------------------------------------------------------
    def training_losses(
        self,
        model: Model,
        x_start: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample losses [N]: ``mse`` (L_simple on the predicted quantity), ``vb`` with a
        learned variance, and ``loss`` = mse + vb (the hybrid objective of Nichol & Dhariwal)."""
        noise = torch.randn_like(x_start) if noise is None else noise
        x_t = self.q_sample(x_start, t, noise)
        output = self.call_model(model, x_t, t, model_kwargs)
        terms: dict[str, torch.Tensor] = {}
        if self.var_type == ModelVarType.LEARNED_RANGE:
            output, var_values = output.split(x_t.shape[1], dim=1)
            # The vb term trains only the variance: the mean goes in with a stop-gradient.
            frozen = torch.cat([output.detach(), var_values], dim=1)
            vb = self._vb_terms_bpd(lambda *_, **__: frozen, x_start, x_t, t)
            # L_vlb is summed over T terms; rescale so λ matches guided-diffusion's 0.001 · T/1000.
            terms["vb"] = vb * self.num_timesteps / 1000.0
        target = {
            ModelMeanType.EPSILON: noise,
            ModelMeanType.START_X: x_start,
            ModelMeanType.V: self.v_target(x_start, t, noise),
        }[self.mean_type]
        terms["mse"] = mean_flat((target.float() - output.float()) ** 2)
        terms["loss"] = terms["mse"] + terms.get("vb", torch.zeros_like(terms["mse"]))
        return terms

    def _vb_terms_bpd(
        self, model: Model, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """L_{t-1} = KL(q(x_{t-1}|x_t,x_0) ‖ p(x_{t-1}|x_t)) in bits/dim; the decoder NLL at t = 0."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(
            2.0
        )
        nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
        nll = mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)


MEAN_TYPES = {"epsilon": ModelMeanType.EPSILON, "x0": ModelMeanType.START_X, "v": ModelMeanType.V}


def create_diffusion(config: DiffusionConfig, steps: int | None = None) -> GaussianDiffusion:
    """The training process of a stage (``steps`` None) or its respaced sampling process."""
    from models.diffusion.respace import SpacedDiffusion, space_timesteps

    betas = get_named_beta_schedule(config.schedule, config.timesteps)
    mean_type = MEAN_TYPES[config.prediction]
    # Without a learned variance, β̃_t (the posterior variance) is the better choice at the
    # few strided steps we sample with.
    var_type = ModelVarType.LEARNED_RANGE if config.learn_sigma else ModelVarType.FIXED_SMALL
    if steps is None or steps >= config.timesteps:
        return GaussianDiffusion(betas, mean_type, var_type)
    return SpacedDiffusion(space_timesteps(config.timesteps, steps), betas, mean_type, var_type)
