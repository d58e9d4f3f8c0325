"""At which noise level does the decoder lose the shape?

Sampling from pure noise must invent the outline; from a partly noised render the outline is
still in the image. :func:`shape_probe` noises held-out renders (fixed noise) to the timesteps of
some of the decoder's own sampling steps, runs the rest of its deterministic DDIM chain from
there with both conditions (the render's own CLIP image embedding and its caption) under the
model's guidance, and names the shape of each result with the evaluator's image analysis, per
shape and size. Starting at the last sampling step (t near 0) every shape must survive; starting
at the first (t = 999) is ordinary sampling from the render's embedding. Where a shape's column
falls between the two says how much noise the decoder can still draw that outline through
(models/training/RECIPE.md, section 10).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from models.clip import TextEncoding
from models.data.shapes import SHAPES, SIZES, ShapesWorld
from models.diffusion.gaussian import GaussianDiffusion
from models.diffusion.guidance import ClassifierFreeGuidance
from models.diffusion.respace import SpacedDiffusion
from models.diffusion.samplers import ddim_sample_loop
from models.evaluation.analysis import analyze
from models.evaluation.evaluate import HELDOUT_SEED, embed_images, to_model_input
from models.factory import create_stage_diffusion
from models.pipeline import UnclipPipeline, to_uint8_images

GROUPS = tuple(f"{size} {shape}" for shape in SHAPES for size in SIZES)  # "small circle", ...
DEFAULT_STARTS = (1.0, 0.8, 0.6, 0.4, 0.2)  # fractions of the sampling chain still to run


@dataclass(frozen=True)
class ShapeProbe:
    """Right-shape fraction per start timestep: ``accuracy[t]["all"]`` and per size and shape."""

    accuracy: dict[int, dict[str, float]]
    counts: dict[str, int]  # renders per group
    n: int
    steps: int
    guidance: float

    def to_markdown(self) -> str:
        header = " | ".join(f"{group} ({self.counts[group]})" for group in GROUPS)
        lines = [
            f"| start t | all ({self.n}) | {header} |  (DDIM {self.steps} steps, guidance {self.guidance:g})",
            "|---:|---:|" + "---:|" * len(GROUPS),
        ]
        for t, row in self.accuracy.items():
            cells = " | ".join(f"{row[group]:.0%}" for group in GROUPS)
            lines.append(f"| {t} | {row['all']:.0%} | {cells} |")
        return "\n".join(lines) + "\n"


@torch.no_grad()
def shape_probe(
    pipeline: UnclipPipeline,
    n: int = 96,
    starts: Sequence[float] = DEFAULT_STARTS,
    seed: int = 0,
    batch_size: int = 32,
) -> ShapeProbe:
    """The probe of the module docstring on the first ``n`` held-out renders at the decoder's side.

    :param starts: fractions in (0, 1] of the decoder's sampling chain left to run: 1 starts at
        its first step (t = 999), 1 / steps at its last.
    """
    config = pipeline.config
    settings = config.sampling.for_stage("decoder")
    if any(not 0.0 < start <= 1.0 for start in starts):
        raise ValueError(f"starts must lie in (0, 1], got {list(starts)}")
    side = config.decoder.unet.image_size
    held = ShapesWorld(HELDOUT_SEED).heldout(n, size=side)
    specs = [example.spec for example in held if example.spec is not None]
    assert len(specs) == n, "held-out examples come from the world and carry their specs"
    groups = [f"{spec.size} {spec.shape}" for spec in specs]
    x_start = to_model_input([example.image for example in held])  # [N x 3 x H x W]
    text = pipeline.encode_text([example.caption for example in held]).to(pipeline.device)
    embed = embed_images(pipeline, [example.image for example in held]).to(pipeline.device)  # [N x D]
    noise = torch.randn(x_start.shape, generator=torch.Generator().manual_seed(seed))
    full = create_stage_diffusion("decoder", config)
    spaced = create_stage_diffusion("decoder", config, steps=settings.steps)
    counts = Counter(groups)
    accuracy: dict[int, dict[str, float]] = {}
    for start in starts:
        t_start, rest = _rest_of_chain(full, spaced, start)
        hits: Counter[str] = Counter()
        for lo in range(0, n, batch_size):
            rows = slice(lo, min(n, lo + batch_size))
            model = _guided_decoder(pipeline, settings.guidance, embed, text, rows)
            steps = torch.full((rows.stop - rows.start,), t_start, dtype=torch.long)  # [count]
            x_t = full.q_sample(x_start[rows], steps, noise[rows])  # [count x 3 x H x W]
            # η = 0: the rest of the chain is deterministic, so it needs no noise streams.
            x = ddim_sample_loop(model, x_t.to(pipeline.device, pipeline.dtype), rest)
            for image, spec, group in zip(to_uint8_images(x), specs[rows], groups[rows], strict=True):
                if analyze(image).shape == spec.shape:
                    hits[group] += 1
                    hits["all"] += 1
        accuracy[t_start] = {"all": hits["all"] / n} | {
            group: hits[group] / counts[group] if counts[group] else float("nan") for group in GROUPS
        }
    return ShapeProbe(
        accuracy=accuracy,
        counts={group: counts[group] for group in GROUPS},
        n=n,
        steps=settings.steps,
        guidance=settings.guidance,
    )


def _rest_of_chain(
    full: GaussianDiffusion, spaced: GaussianDiffusion, start: float
) -> tuple[int, SpacedDiffusion]:
    """(t where the chain is entered, its last steps from there as a process of their own).

    :param start: the fraction in (0, 1] of ``spaced``'s S steps left to run.
    """
    first = max(0, min(spaced.num_timesteps - 1, round(start * spaced.num_timesteps) - 1))
    rest = SpacedDiffusion(spaced.timestep_map[: first + 1], full.betas, spaced.mean_type, spaced.var_type)
    return int(spaced.timestep_map[first]), rest


def _guided_decoder(
    pipeline: UnclipPipeline, guidance: float, embed: torch.Tensor, text: TextEncoding, rows: slice
) -> ClassifierFreeGuidance:
    """The decoder under guidance for ``rows`` of the batch, conditioned on both their CLIP image
    embeddings (``embed`` [N x D]) and their captions' tokens; the unconditional half drops both."""
    dtype = pipeline.dtype
    no = torch.zeros(rows.stop - rows.start, dtype=torch.bool, device=pipeline.device)  # [count]
    cond = {
        "clip_embed": embed[rows].to(dtype),
        "text_tokens": text.tokens[rows].to(dtype),
        "text_mask": text.mask[rows],
        "drop_clip": no,
        "drop_text": no,
    }
    uncond = {**cond, "drop_clip": ~no, "drop_text": ~no}
    return ClassifierFreeGuidance(pipeline.networks["decoder"], guidance, cond, uncond, guided_channels=3)


def main(argv: list[str] | None = None) -> int:
    """``python -m models.evaluation.shape_probe [--weights DIR] [--n N] [--starts F ...]``."""
    import argparse

    from models.pipeline import load_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="model directory (default: the bundled model)")
    parser.add_argument("--n", type=int, default=96, help="held-out renders (default: 96)")
    parser.add_argument(
        "--starts",
        type=float,
        nargs="+",
        default=list(DEFAULT_STARTS),
        help="fractions of the decoder's sampling chain left to run (1: from pure noise)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    args = parser.parse_args(argv)
    probe = shape_probe(load_pipeline(args.weights), n=args.n, starts=args.starts, seed=args.seed)
    print(probe.to_markdown(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
