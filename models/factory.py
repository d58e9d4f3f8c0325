"""One ``create_*`` factory per stage: the network and the diffusion process it is trained with.

The networks and the diffusion math never import each other; this module is where a stage's
config is turned into both. Diffusion objects are built here (guided-diffusion's
``script_util.create_gaussian_diffusion``), so ``models.diffusion.gaussian`` need not know about
configs or respacing.
"""

from __future__ import annotations

from torch import nn

from models.clip import build_clip_model
from models.configs import DiffusionConfig, ModelConfig, StageName, UpsamplerConfig
from models.diffusion import (
    GaussianDiffusion,
    ModelMeanType,
    ModelVarType,
    SpacedDiffusion,
    get_named_beta_schedule,
    space_timesteps,
)
from models.prior import DiffusionPrior
from models.unet import UNetModel
from models.upsampler import SuperResUNet

MEAN_TYPES = {"epsilon": ModelMeanType.EPSILON, "x0": ModelMeanType.START_X, "v": ModelMeanType.V}


def create_prior(config: ModelConfig) -> DiffusionPrior:
    return DiffusionPrior(config.prior)


def create_decoder(config: ModelConfig) -> UNetModel:
    return UNetModel(config.decoder.unet, learn_sigma=config.decoder.diffusion.learn_sigma)


def create_upsampler(config: UpsamplerConfig) -> SuperResUNet:
    return SuperResUNet(config.unet, learn_sigma=config.diffusion.learn_sigma)


def create_stage_module(stage: StageName, config: ModelConfig) -> nn.Module:
    """The network of one stage, with fresh (random) weights."""
    if stage == "clip":
        return build_clip_model(config.clip)
    if stage == "prior":
        return create_prior(config)
    if stage == "decoder":
        return create_decoder(config)
    if stage in ("sr256", "sr1024"):
        return create_upsampler(getattr(config, stage))
    raise ValueError(f"unknown stage {stage!r}")


def create_diffusion(config: DiffusionConfig, steps: int | None = None) -> GaussianDiffusion:
    """A stage's training process (``steps`` None) or its sampling process respaced to ``steps``
    strided steps (:func:`models.diffusion.respace.space_timesteps`).

    Without a learned variance the reverse variance is β̃_t (FIXED_SMALL): it only matters to the
    DDPM sampler, and at the few strided steps we sample with it is the better of the two fixed
    choices (Nichol & Dhariwal §3.1, Fig. 1; our Gaussian tests show the same).
    """
    betas = get_named_beta_schedule(config.schedule, config.timesteps)  # [T], float64
    mean_type = MEAN_TYPES[config.prediction]
    var_type = ModelVarType.LEARNED_RANGE if config.learn_sigma else ModelVarType.FIXED_SMALL
    if steps is None or steps == config.timesteps:
        return GaussianDiffusion(betas, mean_type, var_type)
    return SpacedDiffusion(space_timesteps(config.timesteps, steps), betas, mean_type, var_type)


def stage_diffusion_config(stage: StageName, config: ModelConfig) -> DiffusionConfig:
    if stage == "prior":
        return config.prior.diffusion
    if stage == "decoder":
        return config.decoder.diffusion
    if stage in ("sr256", "sr1024"):
        return getattr(config, stage).diffusion
    raise ValueError(f"stage {stage!r} has no diffusion process")


def create_stage_diffusion(
    stage: StageName, config: ModelConfig, steps: int | None = None
) -> GaussianDiffusion:
    """The stage's diffusion: the full training schedule, or respaced to ``steps`` for sampling."""
    return create_diffusion(stage_diffusion_config(stage, config), steps=steps)
