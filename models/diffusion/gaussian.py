"""Gaussian diffusion: the forward process, the reverse-step statistics and the training losses.

Notation (Ho et al. 2020; Nichol & Dhariwal 2021; Salimans & Ho 2022):

    β_t        noise schedule (:mod:`models.diffusion.schedules`), α_t = 1 - β_t, ᾱ_t = ∏_{s≤t} α_s
    x_t        = √ᾱ_t x_0 + √(1 - ᾱ_t) ε,  ε ~ N(0, I)                       (Ho et al. eq. 4)
    β̃_t        = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t), the variance of q(x_{t-1} | x_t, x_0)  (eq. 7)
    v          = √ᾱ_t ε - √(1 - ᾱ_t) x_0                                     (Salimans & Ho §4)
    pred_xstart the network's estimate x̂_0 of x_0; eps its estimate ε̂ of ε

Index t runs over 0..T-1 (t = 0 is the first noising step, guided-diffusion's convention). The
network is only a callable ``model(x_t, t, **model_kwargs)``; conditioning passes through
``model_kwargs`` untouched, and ``t`` is always an index of the ORIGINAL training schedule
(``timestep_map`` translates for a respaced process). Every method works for any data shape
[N x ...]: the prior diffuses vectors [N x D], the decoder images [N x C x H x W].

Schedule constants are computed once in float64 and gathered per batch by
:func:`_extract_into_tensor`; the arithmetic runs in float32 (float64 for float64 inputs), so a
half-precision network still gets a well-conditioned x̂_0 = √(1/ᾱ_t) x_t - √(1/ᾱ_t - 1) ε̂
(√(1/ᾱ_t) reaches 2·10⁴ at the end of the cosine schedule, beyond float16).
"""

from __future__ import annotations

import enum
import math
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

Model = Callable[..., torch.Tensor]


class ModelMeanType(enum.Enum):
    """What the network predicts (its first C output channels)."""

    EPSILON = "epsilon"  # ε (Ho et al. 2020)
    START_X = "x0"  # x_0 (the unCLIP prior)
    V = "v"  # v = √ᾱ_t ε - √(1-ᾱ_t) x_0 (Salimans & Ho 2022)


class ModelVarType(enum.Enum):
    """The variance σ_t² of p(x_{t-1} | x_t)."""

    FIXED_SMALL = "fixed_small"  # σ² = β̃_t, the posterior variance (exact for a point mass x_0)
    FIXED_LARGE = "fixed_large"  # σ² = β_t (exact for x_0 ~ N(0, I))
    LEARNED_RANGE = "learned_range"  # log σ² = frac log β_t + (1 - frac) log β̃_t, frac = (v+1)/2


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the diffusion arithmetic runs in for data of ``dtype``: at least float32."""
    return torch.promote_types(dtype, torch.float32)


def _extract_into_tensor(
    arr: np.ndarray,
    timesteps: torch.Tensor,
    broadcast_shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``arr[t]`` per batch row, as ``dtype`` on ``timesteps``' device, broadcast to ``broadcast_shape``.

    :param arr: float64 constants [T].
    :param timesteps: LongTensor [N] of indices into ``arr``.
    :param broadcast_shape: [N x ...], the shape of the data the constants multiply.
    :return: a view of shape ``broadcast_shape`` (no copy along the data dimensions).
    """
    values = _constants_on(arr, timesteps.device)[timesteps].to(dtype)  # [N]
    return values.view(-1, *([1] * (len(broadcast_shape) - 1))).expand(broadcast_shape)


# Schedule constants already copied to a device, by (id of the numpy array, device): a sampling
# loop gathers them several times a step, and a copy from pageable host memory each time would
# synchronise host and GPU inside the loop. An entry goes when its array is freed.
_ON_DEVICE: dict[tuple[int, str], torch.Tensor] = {}


def _constants_on(arr: np.ndarray, device: torch.device) -> torch.Tensor:
    """``arr`` [T] as a tensor on ``device``: the array's own memory on the CPU, else a copy made once."""
    if device.type == "cpu":
        return torch.from_numpy(arr)
    key = (id(arr), str(device))
    cached = _ON_DEVICE.get(key)
    if cached is None:
        cached = _ON_DEVICE[key] = torch.from_numpy(arr).to(device)
        weakref.finalize(arr, _ON_DEVICE.pop, key, None)
    return cached


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dimensions: [N x ...] → [N]."""
    return x.mean(dim=tuple(range(1, x.dim())))


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x) by the tanh approximation guided-diffusion uses (so losses match its numbers)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log p(x) for data in [-1, 1] quantised to 256 bins, under N(means, e^(2 log_scales)).

    Ho et al. 2020 eq. 13, the decoder term L_0; the outer bins extend to ±∞.
    """
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


class GaussianDiffusion:
    """Schedule constants (float64, computed once) and the math that uses them.

    :param betas: β_t, float64-convertible array [T], each in (0, 1].
    :param mean_type: what the network predicts.
    :param var_type: how σ_t² of the reverse step is chosen.

    ``timestep_map[i]`` is the original timestep the network sees at index i: the identity here,
    a subsequence for a respaced process (:class:`models.diffusion.respace.SpacedDiffusion`).
    """

    def __init__(self, betas: np.ndarray, mean_type: ModelMeanType, var_type: ModelVarType):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must be a 1-D array with values in (0, 1]")
        self.betas = betas
        self.mean_type = mean_type
        self.var_type = var_type
        self.num_timesteps = len(betas)
        self.timestep_map = np.arange(self.num_timesteps, dtype=np.int64)

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, β̃_t I)   (Ho et al. eq. 6-7)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # β̃_0 = 0, so its log is clipped to log β̃_1 (guided-diffusion); with one step, to log β_0.
        first = self.posterior_variance[1] if self.num_timesteps > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )
        # FIXED_LARGE uses β_t, except β̃_1 at t = 0 "to get a better decoder log likelihood" (guided-diffusion).
        self._fixed_large_variance = np.append(first, betas[1:])
        self._timestep_map_tensor = torch.from_numpy(self.timestep_map)

    # -- forward process ----------------------------------------------------------------------
    def q_sample(
        self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I).

        :param x_start: x_0 [N x ...]; :param t: LongTensor [N]; :param noise: ε like x_start.
        :return: x_t [N x ...] in ``x_start``'s dtype.
        """
        noise = torch.randn_like(x_start) if noise is None else noise
        shape, dtype = tuple(x_start.shape), compute_dtype(x_start.dtype)
        x_t = (
            _extract_into_tensor(self.sqrt_alphas_cumprod, t, shape, dtype) * x_start
            + _extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, shape, dtype) * noise
        )
        return x_t.to(x_start.dtype)

    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(x_{t-1} | x_t, x_0): (mean, variance β̃_t, clipped log β̃_t), each [N x ...]."""
        shape, dtype = tuple(x_t.shape), compute_dtype(x_t.dtype)
        mean = (
            _extract_into_tensor(self.posterior_mean_coef1, t, shape, dtype) * x_start
            + _extract_into_tensor(self.posterior_mean_coef2, t, shape, dtype) * x_t
        )
        variance = _extract_into_tensor(self.posterior_variance, t, shape, dtype)
        log_variance = _extract_into_tensor(self.posterior_log_variance_clipped, t, shape, dtype)
        return mean, variance, log_variance

    # -- parameterisations (all affine in x_t at fixed t) ------------------------------------
    def _predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̂_0 = √(1/ᾱ_t) x_t - √(1/ᾱ_t - 1) ε̂   (Ho et al. eq. 4 solved for x_0)."""
        shape, dtype = tuple(x_t.shape), compute_dtype(x_t.dtype)
        return (
            _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, shape, dtype) * x_t
            - _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, shape, dtype) * eps
        )

    def _predict_eps_from_xstart(
        self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor
    ) -> torch.Tensor:
        """ε̂ = (√(1/ᾱ_t) x_t - x̂_0) / √(1/ᾱ_t - 1)."""
        shape, dtype = tuple(x_t.shape), compute_dtype(x_t.dtype)
        return (
            _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, shape, dtype) * x_t - pred_xstart
        ) / _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, shape, dtype)

    def _predict_xstart_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x̂_0 = √ᾱ_t x_t - √(1-ᾱ_t) v̂   (Salimans & Ho 2022, §4)."""
        shape, dtype = tuple(x_t.shape), compute_dtype(x_t.dtype)
        return (
            _extract_into_tensor(self.sqrt_alphas_cumprod, t, shape, dtype) * x_t
            - _extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, shape, dtype) * v
        )

    def v_target(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = √ᾱ_t ε - √(1-ᾱ_t) x_0, [N x ...]."""
        shape, dtype = tuple(x_start.shape), compute_dtype(x_start.dtype)
        return (
            _extract_into_tensor(self.sqrt_alphas_cumprod, t, shape, dtype) * noise
            - _extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, shape, dtype) * x_start
        )

    def call_model(
        self, model: Model, x: torch.Tensor, t: torch.Tensor, model_kwargs: dict[str, Any] | None = None
    ) -> torch.Tensor:
        """Run the network at the ORIGINAL timesteps of indices ``t`` (respacing keeps the network).

        :param t: LongTensor [N] of indices into this process; the model gets ``timestep_map[t]``.
        """
        original = self._timestep_map_tensor.to(t.device)[t]  # [N]
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
        """p(x_{t-1} | x_t) and the estimates it rests on.

        :param x: x_t [N x C x ...] (any trailing shape); the network sees it as is.
        :param t: LongTensor [N] of indices into this process.
        :param clip_denoised: clamp x̂_0 to [-1, 1] (data scaled to that range) before use.
        :return: ``mean``, ``variance``, ``log_variance`` of x_{t-1}, ``pred_xstart`` (x̂_0) and
            ``eps`` (the ε̂ consistent with the possibly clipped x̂_0), each [N x C x ...] in
            float32 (float64 for float64 input). With LEARNED_RANGE the network returns
            [N x 2C x ...]: C channels for the mean, then C variance values v in [-1, 1].
        """
        shape, dtype = tuple(x.shape), compute_dtype(x.dtype)
        output = self.call_model(model, x, t, model_kwargs).to(dtype)
        if self.var_type == ModelVarType.LEARNED_RANGE:
            if output.shape[1] != 2 * shape[1]:
                raise ValueError(f"learned sigma needs 2 x {shape[1]} output channels, got {output.shape[1]}")
            output, var_values = output.split(shape[1], dim=1)
            # Nichol & Dhariwal eq. 15: Σ_θ = exp(v log β_t + (1 - v) log β̃_t), v mapped from [-1, 1].
            min_log = _extract_into_tensor(self.posterior_log_variance_clipped, t, shape, dtype)
            max_log = _extract_into_tensor(np.log(self.betas), t, shape, dtype)
            frac = (var_values + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            fixed, fixed_log = self._fixed_variance()
            variance = _extract_into_tensor(fixed, t, shape, dtype)
            log_variance = _extract_into_tensor(fixed_log, t, shape, dtype)

        x = x.to(dtype)
        if self.mean_type == ModelMeanType.EPSILON:
            pred_xstart = self._predict_xstart_from_eps(x, t, output)
        elif self.mean_type == ModelMeanType.V:
            pred_xstart = self._predict_xstart_from_v(x, t, output)
        else:
            pred_xstart = output
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        if self.mean_type == ModelMeanType.EPSILON and not clip_denoised:
            eps = output
        else:
            eps = self._predict_eps_from_xstart(x, t, pred_xstart)
        # μ_θ(x_t, t) = μ̃_t(x_t, x̂_0): the posterior mean with x_0 replaced by its estimate.
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {
            "mean": mean,
            "variance": variance,
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "eps": eps,
        }

    def _fixed_variance(self) -> tuple[np.ndarray, np.ndarray]:
        """(σ_t², log σ_t²) [T] for the fixed variance types."""
        if self.var_type == ModelVarType.FIXED_LARGE:
            return self._fixed_large_variance, np.log(self._fixed_large_variance)
        return self.posterior_variance, self.posterior_log_variance_clipped

    # -- training -----------------------------------------------------------------------------
    def training_losses(
        self,
        model: Model,
        x_start: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
        noise: torch.Tensor | None = None,
        pixel_weight: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample losses, each float32 [N] (float64 for float64 data).

        ``mse``: L_simple, the mean squared error of the predicted quantity (ε, x_0 or v by
        ``mean_type``). With LEARNED_RANGE also ``vb``: L_vlb's term at t in bits/dim, computed
        with a stop-gradient on the mean so that it trains only the variance, and weighted by
        T/1000 ("L_hybrid = L_simple + λ L_vlb, λ = 0.001", Nichol & Dhariwal §3.1, where L_vlb
        sums T terms; guided-diffusion's rescaling). ``loss`` = mse (+ vb).

        :param x_start: x_0 [N x ...]; :param t: LongTensor [N] of indices into this process;
        :param noise: ε like ``x_start`` (drawn when None).
        :param pixel_weight: weights of L_simple's squared errors, broadcastable to ``x_start``
            (e.g. [N x 1 x H x W]); None is the plain mean.
        """
        noise = torch.randn_like(x_start) if noise is None else noise
        x_t = self.q_sample(x_start, t, noise)
        output = self.call_model(model, x_t, t, model_kwargs)
        terms: dict[str, torch.Tensor] = {}
        if self.var_type == ModelVarType.LEARNED_RANGE:
            output, var_values = output.split(x_t.shape[1], dim=1)
            frozen = torch.cat([output.detach(), var_values], dim=1)
            vb = self._vb_terms_bpd(lambda *_, **__: frozen, x_start, x_t, t)
            terms["vb"] = vb * (self.num_timesteps / 1000.0)
        dtype = compute_dtype(x_start.dtype)
        target = {
            ModelMeanType.EPSILON: noise,
            ModelMeanType.START_X: x_start,
            ModelMeanType.V: self.v_target(x_start, t, noise),
        }[self.mean_type]
        squared = (target.to(dtype) - output.to(dtype)) ** 2
        terms["mse"] = mean_flat(squared if pixel_weight is None else pixel_weight.to(dtype) * squared)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms

    def _vb_terms_bpd(
        self, model: Model, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """L_{t-1} = KL(q(x_{t-1} | x_t, x_0) ‖ p(x_{t-1} | x_t)) in bits/dim [N]; the decoder
        NLL -log p(x_0 | x_1) at t = 0 (Ho et al. eq. 5)."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(
            2.0
        )
        nll = -discretized_gaussian_log_likelihood(
            x_start.to(kl.dtype), out["mean"], 0.5 * out["log_variance"]
        )
        nll = mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)
