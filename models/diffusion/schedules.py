"""Noise schedules β_1..β_T in float64, as in guided-diffusion's ``get_named_beta_schedule``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np

# Nichol & Dhariwal 2021 §3.2: "we use a small offset s to prevent β_t from being too small
# near t = 0 ... we selected s such that √β_0 was slightly smaller than the pixel bin size 1/127.5".
COSINE_OFFSET = 0.008
# "we clip β_t to be no larger than 0.999 to prevent singularities at the end of the diffusion
# process near t = T."
MAX_BETA = 0.999


def get_named_beta_schedule(name: Literal["cosine", "linear"], timesteps: int) -> np.ndarray:
    """β_t for the T = ``timesteps`` steps, float64 array [T].

    ``linear``: Ho et al. 2020, 1e-4 → 0.02 at T = 1000, both ends scaled by 1000/T so that
    other lengths keep roughly the same total noise (guided-diffusion).
    ``cosine``: Nichol & Dhariwal 2021 eq. 17, ᾱ_t = f(t)/f(0) with
    f(t) = cos²((t/T + s)/(1 + s) · π/2), s = 0.008; β_t = 1 - ᾱ_t/ᾱ_{t-1}, clipped at 0.999.
    """
    if timesteps < 1:
        raise ValueError(f"timesteps must be positive, got {timesteps}")
    if name == "linear":
        scale = 1000 / timesteps
        if scale * 0.02 > MAX_BETA:
            raise ValueError(f"the linear schedule needs timesteps >= 21 (β_T = 20/T), got {timesteps}")
        return np.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=np.float64)
    if name == "cosine":
        return _betas_for_alpha_bar(timesteps, _cosine_alpha_bar)
    raise ValueError(f"unknown beta schedule {name!r}; known: ['cosine', 'linear']")


def _cosine_alpha_bar(t: float) -> float:
    """f(t) of eq. 17 for t in [0, 1] (unnormalised ᾱ)."""
    return math.cos((t + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2


def _betas_for_alpha_bar(timesteps: int, alpha_bar: Callable[[float], float]) -> np.ndarray:
    """β_i = 1 - ᾱ((i+1)/T) / ᾱ(i/T), i = 0..T-1, clipped at :data:`MAX_BETA`."""
    betas = [
        min(1 - alpha_bar((i + 1) / timesteps) / alpha_bar(i / timesteps), MAX_BETA) for i in range(timesteps)
    ]
    return np.array(betas, dtype=np.float64)
