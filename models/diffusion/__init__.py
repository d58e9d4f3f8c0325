"""The diffusion math, apart from any network: schedules, q/p statistics, losses, respacing,
samplers, per-row noise and classifier-free guidance.

Nothing here builds a stage's process from its config: ``models.factory.create_diffusion`` does,
so the math modules never import each other in a cycle (respace imports gaussian, not back)."""

from models.diffusion.gaussian import GaussianDiffusion, ModelMeanType, ModelVarType
from models.diffusion.guidance import ClassifierFreeGuidance
from models.diffusion.noise import RowNoise
from models.diffusion.respace import SpacedDiffusion, space_timesteps
from models.diffusion.samplers import (
    SAMPLERS,
    Sampler,
    ddim_sample_loop,
    ddpm_sample_loop,
    dpmpp_2m_sample_loop,
    initial_noise,
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
    "Sampler",
    "SpacedDiffusion",
    "ddim_sample_loop",
    "ddpm_sample_loop",
    "dpmpp_2m_sample_loop",
    "get_named_beta_schedule",
    "initial_noise",
    "sample",
    "space_timesteps",
]
