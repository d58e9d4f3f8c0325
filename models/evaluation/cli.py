"""``unclip evaluate``: score a model on the held-out prompts; write grid.png, report.json, report.md
and shape_fidelity_worst.png."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.execution_args import add_execution_arguments, execution_from_args
from models.sampling_args import add_sampling_arguments, sampling_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="prompt adherence, shape fidelity, CLIP R-precision and CLIP-FID on the held-out prompts",
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
        "--out",
        type=Path,
        default=Path("out/evaluate"),
        help="writes grid.png, report.json, report.md and shape_fidelity_worst.png",
    )
    p.add_argument(
        "--image-embeddings",
        choices=["prior", "rendered"],
        default="prior",
        help="what the decoder is given: the prior's samples (the real chain), or the CLIP image "
        "embeddings of the held-out renders (scores the decoder and upsamplers without the prior)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_sampling_arguments(p)
    add_execution_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so `unclip --help` does not load torch and the data world.
    from models.evaluation.evaluate import evaluate
    from models.host_memory import keep_freed_memory
    from models.pipeline import load_pipeline

    keep_freed_memory()  # as the worker does: freed activations are reused, not faulted in again
    if args.n < 2 or args.batch_size < 1:
        raise SystemExit("unclip evaluate: --n must be at least 2 and --batch-size at least 1")
    try:
        pipeline = load_pipeline(
            args.weights, device=args.device, dtype=args.dtype, execution=execution_from_args(args)
        )
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
        image_embeddings=args.image_embeddings,
    )
    print(report.to_markdown())
    print(
        f"wrote {args.out / 'grid.png'}, report.json, report.md and shape_fidelity_worst.png", file=sys.stderr
    )
    return 0
