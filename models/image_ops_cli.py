"""``unclip variations | interpolate | text-diff | edit``: unCLIP's image operations from the
command line, on the bundled model (or ``--weights``), writing PNGs (and an interpolation's
animation) with a progress bar per stage. The same operations the service runs as jobs."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from models.configs import SamplingConfig
from models.evaluation.grid import save_grid
from models.host_memory import keep_freed_memory
from models.image_ops import (
    End,
    edit_requests,
    encode_animation,
    interpolation_requests,
    text_diff_requests,
    variation_requests,
)
from models.pipeline import DTYPES, GenerationRequest, UnclipPipeline, load_pipeline, stages_for_size
from models.progress_bars import StageBars


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    variations = subparsers.add_parser("variations", help="variations of an image (paper §3.1)")
    variations.add_argument("image", type=Path)
    variations.add_argument("--n", type=int, default=4)
    variations.add_argument("--inversion", action="store_true", help="start from the image's inverted latent")
    variations.add_argument(
        "--strength", type=float, default=0.5, help="with --inversion: the decoder's eta, 0-1"
    )
    variations.set_defaults(func=run_variations)

    interpolate = subparsers.add_parser("interpolate", help="frames between two images or prompts (§3.2)")
    interpolate.add_argument("a", help="an image file or a prompt")
    interpolate.add_argument("b", help="an image file or a prompt")
    interpolate.add_argument("--steps", type=int, default=5, help="frames, ends included (2-16)")
    interpolate.add_argument(
        "--inversion", action="store_true", help="slerp the two images' inverted latents"
    )
    interpolate.add_argument("--animation", choices=["gif", "webp"], default="gif")
    interpolate.set_defaults(func=run_interpolate)

    diff = subparsers.add_parser("text-diff", help="move an image along a caption difference (§3.3)")
    diff.add_argument("source", help="an image file or a prompt")
    diff.add_argument("--from", dest="base", required=True, help="the caption describing the source")
    diff.add_argument("--to", dest="target", required=True, help="the caption to move towards")
    diff.add_argument("--angles", type=float, nargs="+", default=[0.0, 0.125, 0.25, 0.375, 0.5])
    diff.set_defaults(func=run_text_diff)

    edit = subparsers.add_parser("edit", help="repaint the masked part of an image from a prompt")
    edit.add_argument("image", type=Path, help="a square image (its transparent pixels: where to edit)")
    edit.add_argument("--mask", type=Path, help="a mask of the image's size: transparent or white = edit")
    edit.add_argument("--prompt", required=True)
    edit.add_argument("--n", type=int, default=1)
    edit.add_argument("--resample", type=int, default=3, help="RePaint passes per decoder step")
    edit.set_defaults(func=run_edit)

    for parser in (variations, interpolate, diff, edit):
        parser.add_argument(
            "--strip", type=Path, help="also save the inputs and outputs side by side, captioned, as this PNG"
        )
        parser.add_argument("--size", type=int, default=256, help="output side: 64, 256, 512 or 1024")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--out", type=Path, default=Path("out"), help="output directory")
        parser.add_argument("--weights", help="model directory (default: the bundled model)")
        parser.add_argument("--device", default="cpu")
        parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))


def read_image(path: Path) -> np.ndarray:
    """uint8 [S x S x 3], centre-cropped to a square."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    side = min(rgb.size)
    left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
    return np.asarray(rgb.crop((left, top, left + side, top + side)))


def read_mask(image_path: Path, mask_path: Path | None) -> np.ndarray:
    """[S x S] uint8, 255 = repaint: a mask file's transparency (or white), else the image's."""
    with Image.open(mask_path or image_path) as source:
        if source.mode in ("RGBA", "LA") or "transparency" in source.info:
            alpha = np.asarray(source.convert("RGBA"))[..., 3]
            return np.where(alpha < 128, 255, 0).astype(np.uint8)
        if mask_path is None:
            raise SystemExit("unclip edit: the image has no transparency; give --mask")
        return np.where(np.asarray(source.convert("L")) >= 128, 255, 0).astype(np.uint8)


def _fit(image: np.ndarray, side: int) -> np.ndarray:
    """An input shown beside the outputs, at their size."""
    return np.asarray(Image.fromarray(image).convert("RGB").resize((side, side), Image.Resampling.LANCZOS))


def end(value: str) -> End:
    path = Path(value)
    return End(image=read_image(path)) if path.is_file() else End(prompt=value)


def _setup(args: argparse.Namespace) -> tuple[UnclipPipeline, SamplingConfig]:
    keep_freed_memory()  # as the worker does: freed activations are reused, not faulted in again
    try:
        stages_for_size(args.size)
        pipeline = load_pipeline(args.weights, device=args.device, dtype=args.dtype)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"unclip {args.command}: {error}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    return pipeline, pipeline.config.sampling


def _write(
    args: argparse.Namespace,
    pipeline: UnclipPipeline,
    requests: list[GenerationRequest],
    sampling: SamplingConfig,
    bars: StageBars,
    animation: str | None = None,
    sources: Sequence[tuple[str, np.ndarray]] = (),
    captions: Sequence[str] | None = None,
) -> int:
    output = pipeline.generate(requests, args.size, sampling, progress=bars)
    bars.close()
    frames = [image for images in output.images if images is not None for image in images]
    files = []
    for k, image in enumerate(frames):
        files.append(args.out / f"{args.command}_{k:02d}.png")
        Image.fromarray(image).save(files[-1])
    if animation is not None:
        files.append(args.out / f"{args.command}.{animation}")
        files[-1].write_bytes(encode_animation(frames, animation))
    if args.strip is not None:
        tiles = [_fit(image, args.size) for _, image in sources] + frames
        labels = [label for label, _ in sources] + list(
            captions or [f"output {k}" for k in range(len(frames))]
        )
        files.append(save_grid(tiles, labels, args.strip, columns=len(tiles)))
    summary: dict[str, Any] = {"files": [str(f) for f in files], "seconds": output.timings}
    print(json.dumps(summary))
    return 0


def run_variations(args: argparse.Namespace) -> int:
    pipeline, sampling = _setup(args)
    if args.inversion:
        sampling = sampling.with_overrides({"decoder": {"sampler": "ddim", "eta": args.strength}})
    with StageBars() as bars:
        requests = variation_requests(
            pipeline,
            read_image(args.image),
            args.n,
            args.seed,
            inversion=args.inversion,
            sampling=sampling,
            progress=lambda step, total: bars("invert", step, total),
        )
        return _write(args, pipeline, requests, sampling, bars, sources=[("source", read_image(args.image))])


def run_interpolate(args: argparse.Namespace) -> int:
    pipeline, sampling = _setup(args)
    if args.inversion:
        sampling = sampling.with_overrides({"decoder": {"sampler": "ddim", "eta": 0.0}})
    with StageBars() as bars:
        try:
            requests = interpolation_requests(
                pipeline,
                end(args.a),
                end(args.b),
                args.steps,
                args.seed,
                inversion=args.inversion,
                sampling=sampling,
                progress=lambda step, total: bars("invert", step, total),
            )
        except ValueError as error:
            raise SystemExit(f"unclip interpolate: {error}") from None
        weights = [k / (args.steps - 1) for k in range(args.steps)]
        return _write(
            args,
            pipeline,
            requests,
            sampling,
            bars,
            animation=args.animation,
            captions=[f"{w:.2f}" for w in weights],
        )


def run_text_diff(args: argparse.Namespace) -> int:
    pipeline, sampling = _setup(args)
    source = end(args.source)
    if source.image is not None:
        sampling = sampling.with_overrides({"decoder": {"sampler": "ddim", "eta": 0.0}})
    with StageBars() as bars:
        try:
            requests = text_diff_requests(
                pipeline,
                source,
                args.base,
                args.target,
                args.angles,
                args.seed,
                sampling=sampling,
                progress=lambda step, total: bars("invert", step, total),
            )
        except ValueError as error:
            raise SystemExit(f"unclip text-diff: {error}") from None
        sources = [("source", source.image)] if source.image is not None else []
        captions = [f"theta {a:g}" for a in args.angles]
        return _write(args, pipeline, requests, sampling, bars, sources=sources, captions=captions)


def run_edit(args: argparse.Namespace) -> int:
    pipeline, sampling = _setup(args)
    image = read_image(args.image)
    mask = read_mask(args.image, args.mask)
    if mask.shape != image.shape[:2]:
        raise SystemExit("unclip edit: the mask must be the image's size")
    if not mask.any() or mask.all():
        raise SystemExit("unclip edit: the mask must mark some, but not all, of the image")
    with StageBars() as bars:
        requests = edit_requests(image, mask, args.prompt, args.n, args.seed, resample=args.resample)
        shown = image.copy()
        shown[mask > 0] = 128  # the region to repaint, grey
        return _write(args, pipeline, requests, sampling, bars, sources=[("source", image), ("mask", shown)])
