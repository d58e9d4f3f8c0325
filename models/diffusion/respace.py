"""Respacing: sample with a subsequence of the training timesteps, the network unchanged.

The kept ᾱ values define new betas β'_i = 1 - ᾱ_{k_i} / ᾱ_{k_{i-1}} (Nichol & Dhariwal 2021
§4), and the network still sees the original timestep indices via ``timestep_map``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.diffusion.gaussian import GaussianDiffusion, ModelMeanType, ModelVarType


def space_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """``steps`` evenly strided timesteps from T-1 down to 0, both ends included.

    Starting at T-1 (rather than guided-diffusion's stride from 0) makes the first step see
    nearly pure noise, which matters at the handful of steps a CPU can afford; one step keeps
    only T-1.
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in 1..{num_timesteps}, got {steps}")
    if steps == 1:
        return [num_timesteps - 1]
    return sorted({int(x) for x in np.linspace(0, num_timesteps - 1, steps).round()})


class SpacedDiffusion(GaussianDiffusion):
    """A :class:`GaussianDiffusion` over the kept timesteps of a base schedule."""

    def __init__(
        self,
        use_timesteps: Sequence[int],
        base_betas: np.ndarray,
        mean_type: ModelMeanType,
        var_type: ModelVarType,
    ):
        base = GaussianDiffusion(base_betas, mean_type, var_type)
        kept = sorted(set(use_timesteps))
        last_alpha_cumprod = 1.0
        betas = []
        for t in kept:
            betas.append(1 - base.alphas_cumprod[t] / last_alpha_cumprod)
            last_alpha_cumprod = base.alphas_cumprod[t]
        super().__init__(np.array(betas), mean_type, var_type)
        self.timestep_map = np.array(kept)
        self.base_num_timesteps = base.num_timesteps
