"""``unclip evaluate``: score a model on the held-out prompts; write grid.png, report.json, report.md."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from models.configs import STAGES, SamplingConfig

DIFFUSION_STAGES = [s for s in STAGES if s != "clip"]
SAMPLERS = ["ddpm", "ddim", "dpm++2m"]
GUIDED_STAGES = ("prior", "decoder")  # the upsamplers have no unconditional branch to guide with


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="prompt adherence, CLIP R-precision and CLIP-FID on the held-out prompts",
        description="Generate the held-out prompts (one image each, prompt i with seed SEED+i) and score them.",
    )
    p.add_argument(
        "--weights", help="model directory (default: the bundled model; random:tiny for random weights)"
    )
    p.add_argument("--n", type=int, default=200, help="held-out prompts to generate")
    p.add_argument("--size", type=int, default=256, choices=[64, 256, 512, 1024])
    p.add_argument("--batch-size", type=int, default=8, help="prompts sampled together")
    p.add_argument("--seed", type=int, default=0, help="seed of the first prompt; prompt i uses seed + i")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument(
        "--out", type=Path, default=Path("out/evaluate"), help="writes grid.png, report.json, report.md"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--sampler", choices=SAMPLERS, help="sampler for every stage")
    for stage in DIFFUSION_STAGES:
        p.add_argument(f"--steps-{stage}", type=int, help=f"sampling steps of the {stage} stage")
        if stage in GUIDED_STAGES:
            p.add_argument(f"--guidance-{stage}", type=float, help=f"guidance scale of the {stage} stage")
        p.add_argument(f"--sampler-{stage}", choices=SAMPLERS, help=f"sampler of the {stage} stage")
        p.add_argument(f"--eta-{stage}", type=float, help=f"DDIM eta of the {stage} stage")
    p.set_defaults(func=run)


def sampling_from_args(args: argparse.Namespace, defaults: SamplingConfig) -> SamplingConfig:
    """The model's defaults with the command line's overrides (a per-stage sampler beats --sampler)."""
    stages = {}
    for stage in DIFFUSION_STAGES:
        settings = defaults.for_stage(stage)
        overrides = {
            "steps": getattr(args, f"steps_{stage}", None),
            "guidance": getattr(args, f"guidance_{stage}", None),
            "sampler": getattr(args, f"sampler_{stage}", None) or getattr(args, "sampler", None),
            "eta": getattr(args, f"eta_{stage}", None),
        }
        stages[stage] = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    return SamplingConfig(**stages)


def run(args: argparse.Namespace) -> int:
    # Imported here so `unclip --help` does not load torch and the data world.
    from models.evaluation.evaluate import evaluate
    from models.pipeline import load_pipeline

    if args.n < 2 or args.batch_size < 1:
        raise SystemExit("unclip evaluate: --n must be at least 2 and --batch-size at least 1")
    try:
        pipeline = load_pipeline(args.weights, device=args.device, dtype=args.dtype)
    except (FileNotFoundError, ValueError, KeyError) as error:  # missing dir, bad weights, unknown preset
        raise SystemExit(f"unclip evaluate: {error}") from None
    sampling = sampling_from_args(args, pipeline.config.sampling)
    report = evaluate(
        pipeline,
        n=args.n,
        size=args.size,
        sampling=sampling,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.quiet,
        out_dir=args.out,
    )
    print(report.to_markdown())
    print(f"wrote {args.out / 'grid.png'}, report.json and report.md", file=sys.stderr)
    return 0
