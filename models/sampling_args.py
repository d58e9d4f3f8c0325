"""Command-line overrides of the per-stage sampling settings, shared by ``generate`` and ``evaluate``."""

from __future__ import annotations

import argparse

from models.configs import STAGES, SamplingConfig

DIFFUSION_STAGES = [s for s in STAGES if s != "clip"]
SAMPLERS = ["ddpm", "ddim", "dpm++2m"]
GUIDED_STAGES = ("prior", "decoder")  # the upsamplers have no unconditional branch to guide with


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """``--sampler`` for every stage, and ``--steps-/--guidance-/--sampler-/--eta-STAGE``."""
    parser.add_argument("--sampler", choices=SAMPLERS, help="sampler for every stage")
    for stage in DIFFUSION_STAGES:
        parser.add_argument(f"--steps-{stage}", type=int, help=f"sampling steps of the {stage} stage")
        if stage in GUIDED_STAGES:
            parser.add_argument(
                f"--guidance-{stage}", type=float, help=f"guidance scale of the {stage} stage"
            )
        parser.add_argument(f"--sampler-{stage}", choices=SAMPLERS, help=f"sampler of the {stage} stage")
        parser.add_argument(f"--eta-{stage}", type=float, help=f"DDIM eta of the {stage} stage")


def sampling_from_args(args: argparse.Namespace, defaults: SamplingConfig) -> SamplingConfig:
    """The model's defaults with the command line's overrides (a per-stage sampler beats --sampler)."""
    return defaults.with_overrides(
        {
            stage: {
                "steps": getattr(args, f"steps_{stage}", None),
                "guidance": getattr(args, f"guidance_{stage}", None),
                "sampler": getattr(args, f"sampler_{stage}", None) or getattr(args, "sampler", None),
                "eta": getattr(args, f"eta_{stage}", None),
            }
            for stage in DIFFUSION_STAGES
        }
    )
