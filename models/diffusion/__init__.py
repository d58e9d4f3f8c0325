"""The diffusion math, apart from any network: schedules, q/p statistics, losses, respacing,
samplers, per-row noise and classifier-free guidance."""

from models.diffusion.gaussian import (
    GaussianDiffusion,
    ModelMeanType,
    ModelVarType,
    create_diffusion,
)
from models.diffusion.guidance import ClassifierFreeGuidance
from models.diffusion.noise import RowNoise
from models.diffusion.respace import SpacedDiffusion, space_timesteps
from models.diffusion.samplers import (
    SAMPLERS,
    ddim_sample_loop,
    ddpm_sample_loop,
    dpmpp_2m_sample_loop,
    sample,
)
from models.diffusion.schedules import get_named_beta_schedule

__all__ = [
    "SAMPLERS",
    "ClassifierFreeGuidance",
    "GaussianDiffusion",
    "ModelMeanType",
    "ModelVarType",
    "RowNoise",
    "SpacedDiffusion",
    "create_diffusion",
    "ddim_sample_loop",
    "ddpm_sample_loop",
    "dpmpp_2m_sample_loop",
    "get_named_beta_schedule",
    "sample",
    "space_timesteps",
]
