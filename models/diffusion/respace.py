"""Respacing: sample with a subsequence of the training timesteps, the network unchanged.

Nichol & Dhariwal 2021 §4: "given an arbitrary subsequence S of timesteps and the training ᾱ_t,
we can compute the sampling noise schedule β_{S_t} = 1 - ᾱ_{S_t}/ᾱ_{S_{t-1}}". The kept ᾱ values
are exactly the base ones, and the network still sees the original timestep indices through
``timestep_map`` (guided-diffusion's ``respace.py``; :meth:`GaussianDiffusion.call_model` applies it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models.diffusion.gaussian import GaussianDiffusion, ModelMeanType, ModelVarType


def space_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """``steps`` evenly strided timesteps of 0..T-1, ascending, with BOTH ends kept.

    k_i = round(i (T-1)/(steps-1)), i = 0..steps-1; the stride (T-1)/(steps-1) ≥ 1 makes them
    distinct. Keeping T-1 (guided-diffusion's "ddimN" stride from 0 never reaches it) means the
    first step starts from ᾱ ≈ 0, where x_T ~ N(0, I) is right: Lin et al. 2024 ("Common diffusion
    noise schedules and sample steps are flawed", §3.3) show the stride-from-0 choice starts from
    an x_T that was never pure noise in training. Keeping 0 means the last step ends on the
    least-noisy training step. One step keeps only T-1 (a single x̂_0 prediction from noise).

    >>> space_timesteps(1000, 4)
    [0, 333, 666, 999]
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in 1..{num_timesteps}, got {steps}")
    if steps == 1:
        return [num_timesteps - 1]
    return [round(i * (num_timesteps - 1) / (steps - 1)) for i in range(steps)]


class SpacedDiffusion(GaussianDiffusion):
    """A :class:`GaussianDiffusion` over the kept timesteps of a base schedule.

    :param use_timesteps: the kept indices of the base schedule (any order; duplicates dropped).
    :param base_betas: the training β_t [T].
    Index i of this process is original timestep ``timestep_map[i]``; ``alphas_cumprod[i]``
    equals the base ``alphas_cumprod[timestep_map[i]]``.
    """

    def __init__(
        self,
        use_timesteps: Sequence[int] | np.ndarray,
        base_betas: np.ndarray,
        mean_type: ModelMeanType,
        var_type: ModelVarType,
    ):
        base_alphas_cumprod = np.cumprod(1.0 - np.asarray(base_betas, dtype=np.float64))
        kept = sorted({int(t) for t in use_timesteps})
        if not kept or kept[0] < 0 or kept[-1] >= len(base_alphas_cumprod):
            raise ValueError(f"use_timesteps must lie in 0..{len(base_alphas_cumprod) - 1}")
        # β_{S_i} = 1 - ᾱ_{S_i} / ᾱ_{S_{i-1}}, with ᾱ_{S_{-1}} = 1.
        previous = np.append(1.0, base_alphas_cumprod[kept][:-1])
        super().__init__(1.0 - base_alphas_cumprod[kept] / previous, mean_type, var_type)
        self.timestep_map = np.array(kept, dtype=np.int64)
        self._timestep_map_tensor = torch.from_numpy(self.timestep_map)
        self.original_num_steps = len(base_alphas_cumprod)
