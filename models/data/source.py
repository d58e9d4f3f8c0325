"""Where training examples come from: the shapes world, or a folder of captioned images.

A data source is anything with ``examples(size, seed) -> Iterator[Example]``: an endless stream,
the same for the same seed (:class:`DataSource`). Training reads it through
``models.training.stream.ExampleStream`` and turns lists of examples into tensors with
:func:`torch_batch`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image, ImageOps

from models.data.shapes import HELDOUT_EXCLUDED, Example, ShapesWorld

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@runtime_checkable
class DataSource(Protocol):
    def examples(self, size: int, seed: int) -> Iterator[Example]:
        """Examples at ``size`` x ``size``, without end; the same stream for the same ``seed``."""
        ...


class ShapesSource:
    """The shapes world as a data source: ``seed`` picks the training stream of one world.

    Every stream keeps out the first ``exclude_heldout`` held-out captions of world
    ``world_seed``, the world the evaluation set comes from.
    """

    def __init__(
        self,
        world_seed: int = 0,
        exclude_heldout: int = HELDOUT_EXCLUDED,
        shape_weights: dict[str, float] | None = None,
    ):
        self.world = ShapesWorld(world_seed, exclude_heldout=exclude_heldout, shape_weights=shape_weights)

    def __repr__(self) -> str:
        return f"ShapesSource({self.world!r})"

    def with_shape_weights(self, shape_weights: dict[str, float] | None) -> ShapesSource:
        """The same world with its training streams' shapes drawn by ``shape_weights``."""
        return ShapesSource(self.world.seed, self.world.exclude_heldout, shape_weights)

    def examples(self, size: int, seed: int) -> Iterator[Example]:
        return self.world.examples(size, stream=seed)


class FolderSource:
    """A folder of image + caption pairs a user brings: ``name.png|jpg|jpeg|webp`` + ``name.txt``.

    Images are center-cropped to a square and resized to ``size``; the pairs are shuffled
    afresh each epoch, deterministically by ``seed`` and epoch. The folder is checked once, here:
    an empty folder, an image without a caption file or an empty caption is an error.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data folder {self.root} does not exist or is not a folder")
        images = sorted(p for p in self.root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise ValueError(f"data folder {self.root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        missing = [p.name for p in images if not p.with_suffix(".txt").is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ValueError(f"images without a caption file (name.txt) in {self.root}: {shown}")
        self.pairs = [(p, _read_caption(p.with_suffix(".txt"))) for p in images]

    def __repr__(self) -> str:
        return f"FolderSource({str(self.root)!r}, {len(self.pairs)} pairs)"

    def __len__(self) -> int:
        return len(self.pairs)

    def examples(self, size: int, seed: int) -> Iterator[Example]:
        for epoch in itertools.count():
            order = np.random.default_rng([seed, epoch]).permutation(len(self.pairs))
            for index in order:
                path, caption = self.pairs[index]
                yield Example(load_square(path, size), caption, None)


def _read_caption(path: Path) -> str:
    caption = " ".join(path.read_text(encoding="utf-8").split())
    if not caption:
        raise ValueError(f"caption file {path} is empty")
    return caption


def load_square(path: str | Path, size: int) -> np.ndarray:
    """An image file, center-cropped to a square and resized: uint8 ``[size x size x 3]``."""
    with Image.open(path) as file:
        image = ImageOps.exif_transpose(file).convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        square = image.crop((left, top, left + side, top + side))
        return np.asarray(square.resize((size, size), Image.Resampling.LANCZOS))


def torch_batch(examples: Sequence[Example]) -> tuple[torch.Tensor, list[str]]:
    """Images as a float tensor ``[N x 3 x H x W]`` in [-1, 1], and the captions."""
    if not examples:
        raise ValueError("torch_batch needs at least one example")
    shapes = {np.shape(e.image) for e in examples}
    if len(shapes) != 1:
        raise ValueError(f"examples of different image shapes cannot be batched: {sorted(shapes)}")
    images = np.stack([np.asarray(e.image) for e in examples])  # [N x H x W x 3] uint8
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return tensor.contiguous(), [e.caption for e in examples]
