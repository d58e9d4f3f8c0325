"""Noise schedules β_1..β_T (float64), as in guided-diffusion's ``get_named_beta_schedule``."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np


def get_named_beta_schedule(name: Literal["cosine", "linear"], timesteps: int) -> np.ndarray:
    """β_t for t = 1..T.

    ``linear``: Ho et al. 2020, 1e-4 → 0.02 at T=1000, scaled by 1000/T so other lengths keep
    the same overall noise. ``cosine``: Nichol & Dhariwal 2021 eq. 17, ᾱ_t = f(t)/f(0),
    f(t) = cos²((t/T + s)/(1 + s) · π/2), s = 0.008, β clipped at 0.999 near t = T.
    """
    if name == "linear":
        scale = 1000 / timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=np.float64)
    if name == "cosine":

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [
            min(1 - alpha_bar((i + 1) / timesteps) / alpha_bar(i / timesteps), 0.999)
            for i in range(timesteps)
        ]
        return np.array(betas, dtype=np.float64)
    raise ValueError(f"unknown beta schedule {name!r}")
