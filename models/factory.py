"""One ``create_*`` factory per stage: the network and the diffusion process it is trained with.

The networks and the diffusion math never import each other; this module is where a stage's
config is turned into both.
"""

from __future__ import annotations

from torch import nn

from models.clip import build_clip_model
from models.configs import DiffusionConfig, ModelConfig, StageName, UpsamplerConfig
from models.diffusion import GaussianDiffusion, create_diffusion
from models.prior import DiffusionPrior
from models.unet import UNetModel
from models.upsampler import SuperResUNet


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
