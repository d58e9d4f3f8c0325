"""Parameter counts and analytic FLOPs per image for each stage, without allocating weights.

Networks are built on the meta device and one forward pass per stage is traced with
``torch.utils.flop_counter.FlopCounterMode`` (it counts matmuls, convolutions and attention
from shapes alone), so even the paper's 5.5B-parameter chain is counted on a laptop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import open_clip
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.clip import open_clip_model_cfg
from models.configs import STAGES, ModelConfig, SamplingConfig, StageName
from models.factory import create_stage_module
from models.pipeline import stages_for_size


@dataclass(frozen=True)
class StageCost:
    stage: StageName
    parameters: int
    forward_flops: int  # one network evaluation for one image
    evaluations_per_image: int  # steps x guidance doubling x prior candidates
    flops_per_image: int


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _forward_inputs(stage: StageName, config: ModelConfig) -> tuple[tuple, dict]:
    """Batch-of-one meta inputs for one forward pass of a stage's network."""
    one = torch.zeros(1, dtype=torch.long)
    tokens = torch.zeros(1, config.clip.context_length, config.clip.text_width)
    mask = torch.ones(1, config.clip.context_length, dtype=torch.bool)
    if stage == "clip":
        return (torch.zeros(1, config.clip.context_length, dtype=torch.long),), {}
    if stage == "prior":
        d = config.prior.embed_dim
        kwargs = {"text_embed": torch.zeros(1, d), "text_tokens": tokens, "text_mask": mask}
        return (torch.zeros(1, d), one), kwargs
    if stage == "decoder":
        side = config.decoder.unet.image_size
        kwargs = {
            "clip_embed": torch.zeros(1, config.clip.embed_dim),
            "text_tokens": tokens,
            "text_mask": mask,
        }
        return (torch.zeros(1, 3, side, side), one), kwargs
    up = getattr(config, stage)
    side = up.unet.image_size
    return (torch.zeros(1, 3, side, side), one), {
        "low_res": torch.zeros(1, 3, up.low_res_size, up.low_res_size)
    }


def _meta_module(stage: StageName, config: ModelConfig) -> tuple[torch.nn.Module, Callable[..., object]]:
    """A stage's network and the call that is one forward of it (CLIP: its text tower only)."""
    if stage == "clip":
        # open_clip's factory moves the model with .to(), which meta tensors refuse; build the
        # class from the same architecture dict instead.
        if config.clip.open_clip_name is not None:
            architecture = open_clip.get_model_config(config.clip.open_clip_name)
        else:
            architecture = open_clip_model_cfg(config.clip)
        clip = open_clip.CLIP(**architecture)
        return clip, clip.encode_text
    module = create_stage_module(stage, config)
    return module, module


def forward_flops(stage: StageName, config: ModelConfig) -> tuple[int, int]:
    """(parameters, FLOPs of one forward for one image); CLIP counts its text tower only."""
    with torch.device("meta"):
        module, forward = _meta_module(stage, config)
        args, kwargs = _forward_inputs(stage, config)
        with FlopCounterMode(display=False) as counter:
            forward(*args, **kwargs)
    return count_parameters(module), counter.get_total_flops()


def evaluations_per_image(stage: StageName, config: ModelConfig, sampling: SamplingConfig) -> int:
    if stage == "clip":
        return 1
    settings = sampling.for_stage(stage)
    guided = 2 if stage in ("prior", "decoder") and settings.guidance != 1.0 else 1
    candidates = config.prior.candidates if stage == "prior" else 1
    return settings.steps * guided * candidates


def stage_costs(
    config: ModelConfig, size: int = 1024, sampling: SamplingConfig | None = None
) -> list[StageCost]:
    """The cost of each stage that an image of ``size`` needs, at ``sampling`` (default: the config's)."""
    sampling = sampling or config.sampling
    needed = ("clip", *stages_for_size(size))
    costs = []
    for stage in STAGES:
        if stage not in needed:
            continue
        parameters, flops = forward_flops(stage, config)
        evaluations = evaluations_per_image(stage, config, sampling)
        costs.append(StageCost(stage, parameters, flops, evaluations, flops * evaluations))
    return costs
