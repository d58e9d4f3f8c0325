"""Which attributes does a CLIP tell apart? Retrieval among pictures that differ in one attribute.

In-batch retrieval (what CLIP training reports) is easy in the shapes world: two random captions
almost always differ in several attributes, so a CLIP that knows only color and size already
scores well. The decoder and the prior need more: the CLIP image embedding is most of what the
decoder is told, so an attribute the embedding does not separate is one the decoder must guess.

:func:`attribute_swap_retrieval` draws ``groups`` pictures and, for each attribute, renders every
value of that attribute with all else (jitters included) fixed, captions each in full, and counts
how often each caption's own picture is the nearest of its group (text → image) and each
picture's own caption the nearest (image → text). Chance is 1 / (number of values): 1/6 for
color, 1/4 shape, 1/2 size, 1/9 position. Position is also scored by axis (``position_row``:
the retrieved picture is in the right row, ``position_column``: the right column; chance 1/3
each), since a CLIP can tell left from right long before it tells top from bottom.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from models.data.shapes import (
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    CaptionAttributes,
    ShapeSpec,
    compose_caption,
    render,
    sample_spec,
    with_attribute,
)

SWAP_VALUES: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "size": tuple(SIZES),
    "position": tuple(POSITIONS),
}

# The axes of the position grid: which row and which column each position name is in.
POSITION_AXES: dict[str, dict[str, int]] = {
    "row": {name: 0 if "top" in name else 2 if "bottom" in name else 1 for name in POSITIONS},
    "column": {name: 0 if "left" in name else 2 if "right" in name else 1 for name in POSITIONS},
}

ImageEncoder = Callable[[torch.Tensor], torch.Tensor]  # [N x 3 x H x W] in [-1, 1] -> [N x D] unit
TextEncoder = Callable[[list[str]], torch.Tensor]  # captions -> [N x D] unit


@dataclass(frozen=True)
class SwapRetrieval:
    """Per attribute: top-1 retrieval within groups that differ only in that attribute."""

    text_to_image: dict[str, float]
    image_to_text: dict[str, float]
    groups: int

    def to_metrics(self, prefix: str = "held_swap") -> dict[str, float]:
        """Flat log entries, e.g. ``held_swap_position_t2i``."""
        out = {f"{prefix}_{a}_t2i": v for a, v in self.text_to_image.items()}
        out.update({f"{prefix}_{a}_i2t": v for a, v in self.image_to_text.items()})
        return out


def caption(spec: ShapeSpec) -> str:
    """The full canonical caption (the held-out prompts' and most user prompts' phrasing)."""
    named = {a: getattr(spec, a) for a in ("color", "shape", "size", "position", "background")}
    return compose_caption("canonical", CaptionAttributes(**named))


@torch.no_grad()
def attribute_swap_retrieval(
    encode_images: ImageEncoder,
    encode_texts: TextEncoder,
    *,
    groups: int = 32,
    image_size: int = 64,
    seed: int = 0,
) -> SwapRetrieval:
    """Retrieval within attribute-swap groups (module docstring), deterministic by ``seed``."""
    rng = np.random.default_rng(seed)
    bases = [sample_spec(rng) for _ in range(groups)]
    text_to_image: dict[str, float] = {}
    image_to_text: dict[str, float] = {}
    for attribute, values in SWAP_VALUES.items():
        specs = [with_attribute(base, attribute, value) for base in bases for value in values]
        pixels = np.stack([render(spec, image_size) for spec in specs])  # [G*V x H x W x 3]
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        image_emb = encode_images(images).float().view(groups, len(values), -1)  # [G x V x D]
        text_emb = encode_texts([caption(s) for s in specs]).float().view(groups, len(values), -1)
        similarity = image_emb @ text_emb.transpose(1, 2)  # [G x V(images) x V(texts)]
        own = torch.arange(len(values))
        image_to_text[attribute] = float((similarity.argmax(2) == own).float().mean())
        text_to_image[attribute] = float((similarity.argmax(1) == own).float().mean())
        if attribute == "position":
            for axis, index in POSITION_AXES.items():
                of = torch.tensor([index[v] for v in values])  # [V] the axis index of each value
                image_to_text[f"position_{axis}"] = float((of[similarity.argmax(2)] == of).float().mean())
                text_to_image[f"position_{axis}"] = float((of[similarity.argmax(1)] == of).float().mean())
    return SwapRetrieval(text_to_image=text_to_image, image_to_text=image_to_text, groups=groups)


def main(argv: list[str] | None = None) -> int:
    """``python -m models.evaluation.clip_probe [--weights DIR] [--groups N]``: print the table."""
    import argparse

    from models.checkpoints import load_stage_into, read_manifest
    from models.clip import FrozenClip, build_clip_model
    from models.pipeline import DEFAULT_WEIGHTS_DIR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights", default=str(DEFAULT_WEIGHTS_DIR), help="model directory (default: bundled)"
    )
    parser.add_argument("--groups", type=int, default=64, help="pictures per attribute (default: 64)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = read_manifest(args.weights).config.clip
    model = build_clip_model(config)
    load_stage_into(model, args.weights, "clip")
    clip = FrozenClip(model)
    result = attribute_swap_retrieval(
        clip.encode_image,
        lambda captions: clip.encode_text(captions).embedding,
        groups=args.groups,
        image_size=config.image_size,
        seed=args.seed,
    )
    print(f"| attribute | chance | text → image | image → text |  ({args.groups} groups, {args.weights})")
    print("|---|---:|---:|---:|")
    chances = {attribute: 1 / len(values) for attribute, values in SWAP_VALUES.items()}
    chances.update({f"position_{axis}": 1 / 3 for axis in POSITION_AXES})
    for attribute, chance in chances.items():
        t2i, i2t = result.text_to_image[attribute], result.image_to_text[attribute]
        print(f"| {attribute} | {chance:.0%} | {t2i:.0%} | {i2t:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
