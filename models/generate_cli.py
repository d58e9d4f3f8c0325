"""``unclip generate``: prompts in, PNG files out, per-stage timings printed.

torch, open_clip and the model code load only once the arguments are checked (``--help`` and
argument errors answer at once); what a one-image run spends importing is in docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from models.configs import STAGES
from models.execution_args import add_execution_arguments, execution_from_args
from models.progress_bars import StageBars
from models.sampling_args import add_sampling_arguments, sampling_from_args

if TYPE_CHECKING:
    from models.pipeline import UnclipPipeline


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="generate images for one prompt or a file of prompts")
    p.add_argument("prompt", nargs="?", help="the text prompt (or use --prompts-file)")
    p.add_argument("--prompts-file", type=Path, help="one prompt a line; all lines are generated in batches")
    p.add_argument("--n", type=int, default=1, help="images per prompt")
    p.add_argument("--size", type=int, default=256, help="image side: 64 (decoder only), 256, 512 or 1024")
    p.add_argument("--seed", type=int, default=0, help="seed of the first prompt; prompt k uses seed + k")
    p.add_argument("--out", type=Path, default=Path("out"), help="output directory")
    p.add_argument("--weights", help="model directory (default: the bundled model)")
    p.add_argument("--random-weights", metavar="CONFIG", help="run on random weights of a preset, e.g. tiny")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--batch-size", type=int, default=8, help="prompts sampled together")
    add_sampling_arguments(p)
    add_execution_arguments(p)
    p.set_defaults(func=run)


def read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompts_file is not None:
        lines = args.prompts_file.read_text(encoding="utf-8").splitlines()
        prompts = [line.strip() for line in lines if line.strip()]
    elif args.prompt:
        prompts = [args.prompt]
    else:
        prompts = []
    if not prompts:
        raise SystemExit("unclip generate: give a PROMPT or a non-empty --prompts-file")
    return prompts


def run(args: argparse.Namespace) -> int:
    prompts = read_prompts(args)
    if args.n < 1 or args.batch_size < 1:
        raise SystemExit("unclip generate: --n and --batch-size must be at least 1")
    from PIL import Image

    from models.host_memory import keep_freed_memory
    from models.pipeline import GenerationRequest, load_pipeline, stages_for_size

    keep_freed_memory()

    try:
        stages_for_size(args.size)
    except ValueError as error:
        raise SystemExit(f"unclip generate: --size: {error}") from None
    weights = f"random:{args.random_weights}" if args.random_weights else args.weights
    try:
        pipeline: UnclipPipeline = load_pipeline(
            weights, device=args.device, dtype=args.dtype, execution=execution_from_args(args)
        )
    except (FileNotFoundError, ValueError, KeyError) as error:  # missing dir, bad weights, unknown preset
        raise SystemExit(f"unclip generate: {error}") from None
    sampling = sampling_from_args(args, pipeline.config.sampling)
    args.out.mkdir(parents=True, exist_ok=True)
    totals: dict[str, float] = {stage: 0.0 for stage in STAGES}
    for first in range(0, len(prompts), args.batch_size):
        batch = prompts[first : first + args.batch_size]
        requests = [GenerationRequest(p, n=args.n, seed=args.seed + first + k) for k, p in enumerate(batch)]
        batch_label = f"batch {first // args.batch_size + 1}/{-(-len(prompts) // args.batch_size)} "
        with StageBars(prefix=batch_label) as bars:
            output = pipeline.generate(requests, args.size, sampling, progress=bars)
        for k, images in enumerate(output.images):
            assert images is not None
            for j, image in enumerate(images):
                Image.fromarray(image).save(args.out / f"{first + k:04d}_{j}.png")
        for stage, seconds in output.timings.items():
            totals[stage] += seconds
        print(f"batch {first // args.batch_size + 1}: {len(batch)} prompt(s) done", file=sys.stderr)
    images = len(prompts) * args.n
    print(
        json.dumps({"images": images, "size": args.size, "out": str(args.out), "seconds": _rounded(totals)})
    )
    for stage, seconds in totals.items():
        if seconds:
            print(f"{stage:>8}: {seconds:8.2f} s total, {seconds / images:7.3f} s/image", file=sys.stderr)
    return 0


def _rounded(totals: dict[str, float]) -> dict[str, float]:
    return {stage: round(seconds, 4) for stage, seconds in totals.items() if seconds}
