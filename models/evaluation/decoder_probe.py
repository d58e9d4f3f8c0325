"""Where does the decoder put the object before the image says where it is?

Sampling starts from pure noise, so the first steps' x0 predictions can place the object only
from the conditions: the CLIP image embedding and the caption. :func:`placement_probe` noises the
held-out renders to a few timesteps near the end of the schedule (fixed noise), asks the decoder
for x0 under four condition sets, and counts how often the 3×3 cell with the most object mass
(absolute difference from the render's background color) is the render's own cell. Chance is 1/9.

- ``both``: the render's own CLIP image embedding and its caption (what training teaches);
- ``caption``: the caption alone (embedding dropped); ``embedding``: the embedding alone;
- ``none``: both dropped (the unconditional half of guidance): what the noise itself still shows.

At t = 999 (cosine schedule) ``none`` is at chance: the figure is what the conditions alone give.
A decoder whose ``caption`` column sits at chance there does not read position from the words,
whatever its training loss says (models/training/RECIPE.md, section 7).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from models.data.shapes import BACKGROUNDS, POSITIONS, ShapesWorld
from models.evaluation.evaluate import HELDOUT_SEED, embed_images, to_model_input
from models.factory import create_stage_diffusion
from models.pipeline import UnclipPipeline

# condition set -> (drop the CLIP embedding, drop the caption)
CONDITIONS: dict[str, tuple[bool, bool]] = {
    "both": (False, False),
    "caption": (True, False),
    "embedding": (False, True),
    "none": (True, True),
}
DEFAULT_TIMESTEPS = (999, 975, 950)
# (column, row) of a cell -> its position name
_CELL_NAMES = {(int(x * 3), int(y * 3)): name for name, (x, y) in POSITIONS.items()}


@dataclass(frozen=True)
class PlacementProbe:
    """Right-cell fraction of x0 predictions, per timestep and condition set."""

    accuracy: dict[int, dict[str, float]]
    n: int

    def to_markdown(self) -> str:
        lines = [
            f"| t | {' | '.join(CONDITIONS)} |  ({self.n} held-out renders, chance 11%)",
            "|---:|" + "---:|" * len(CONDITIONS),
        ]
        for t, row in self.accuracy.items():
            lines.append(f"| {t} | " + " | ".join(f"{row[c]:.0%}" for c in CONDITIONS) + " |")
        return "\n".join(lines) + "\n"


def object_cell(image: torch.Tensor, background: torch.Tensor) -> str:
    """The position name of the 3×3 cell holding most of the difference from ``background``.

    :param image: [3 x H x W] in [-1, 1]; :param background: [3] in [-1, 1].
    """
    mass = (image - background[:, None, None]).abs().sum(0)  # [H x W]
    side_y, side_x = mass.shape
    ys = [round(k * side_y / 3) for k in range(4)]
    xs = [round(k * side_x / 3) for k in range(4)]
    cells = torch.stack(
        [mass[ys[r] : ys[r + 1], xs[c] : xs[c + 1]].sum() for r in range(3) for c in range(3)]
    )  # [9], row-major
    best = int(cells.argmax())
    return _CELL_NAMES[(best % 3, best // 3)]


@torch.no_grad()
def placement_probe(
    pipeline: UnclipPipeline,
    n: int = 96,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    seed: int = 0,
    batch_size: int = 32,
) -> PlacementProbe:
    """The probe of the module docstring on the first ``n`` held-out renders."""
    config = pipeline.config
    side = config.decoder.unet.image_size
    held = ShapesWorld(HELDOUT_SEED).heldout(n, size=side)
    x_start = to_model_input([example.image for example in held])  # [N x 3 x H x W]
    specs = [example.spec for example in held if example.spec is not None]
    assert len(specs) == n, "held-out examples come from the world and carry their specs"
    backgrounds = (
        torch.tensor([BACKGROUNDS[spec.background] for spec in specs]).float() / 127.5 - 1.0
    )  # [N x 3]
    text = pipeline.encode_text([example.caption for example in held]).to(pipeline.device)
    embed = embed_images(pipeline, [example.image for example in held]).to(pipeline.device)  # [N x D]
    noise = torch.randn(x_start.shape, generator=torch.Generator().manual_seed(seed))
    diffusion = create_stage_diffusion("decoder", config)
    network, dtype = pipeline.networks["decoder"], pipeline.dtype
    accuracy: dict[int, dict[str, float]] = {}
    for t in timesteps:
        if not 0 <= t < diffusion.num_timesteps:
            raise ValueError(f"timestep {t} is outside the decoder's schedule [0, {diffusion.num_timesteps})")
        hits = dict.fromkeys(CONDITIONS, 0)
        for first in range(0, n, batch_size):
            rows = slice(first, min(n, first + batch_size))
            count = rows.stop - rows.start
            steps = torch.full((count,), t, dtype=torch.long)
            x_t = diffusion.q_sample(x_start[rows], steps, noise[rows]).to(pipeline.device)
            for name, (drop_clip, drop_text) in CONDITIONS.items():
                kwargs = {
                    "clip_embed": embed[rows].to(dtype),
                    "text_tokens": text.tokens[rows].to(dtype),
                    "text_mask": text.mask[rows],
                    "drop_clip": torch.full((count,), drop_clip, device=pipeline.device),
                    "drop_text": torch.full((count,), drop_text, device=pipeline.device),
                }
                x0 = diffusion.p_mean_variance(
                    network, x_t.to(dtype), steps.to(pipeline.device), model_kwargs=kwargs
                )["pred_xstart"].cpu()  # [B x 3 x H x W]
                for k, spec in enumerate(specs[rows]):
                    hits[name] += object_cell(x0[k], backgrounds[rows.start + k]) == spec.position
        accuracy[int(t)] = {name: hits[name] / n for name in CONDITIONS}
    return PlacementProbe(accuracy=accuracy, n=n)


def main(argv: list[str] | None = None) -> int:
    """``python -m models.evaluation.decoder_probe [--weights DIR] [--n N] [--timesteps T ...]``."""
    import argparse

    from models.pipeline import load_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="model directory (default: the bundled model)")
    parser.add_argument("--n", type=int, default=96, help="held-out renders (default: 96)")
    parser.add_argument("--timesteps", type=int, nargs="+", default=list(DEFAULT_TIMESTEPS))
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    args = parser.parse_args(argv)
    probe = placement_probe(load_pipeline(args.weights), n=args.n, timesteps=args.timesteps, seed=args.seed)
    print(probe.to_markdown(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
