"""A contact sheet of images, optionally captioned, saved as one PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PADDING = 4
LINE_HEIGHT = 12  # PIL's default bitmap font is about 11 px tall
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)


def _tile(image: np.ndarray) -> Image.Image:
    """uint8 ``[H x W x 3]`` (or ``[H x W]``) to an RGB PIL image."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"grid tiles must be uint8, got {array.dtype}")
    return Image.fromarray(array).convert("RGB")


def _wrap(caption: str, width_px: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> list[str]:
    """Greedy word wrap to ``width_px`` as measured in ``font`` (a too-long word gets its own line)."""
    lines: list[str] = []
    for word in caption.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= width_px:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines or [""]


def save_grid(
    images: Sequence[np.ndarray],
    captions: Sequence[str] | None,
    path: str | Path,
    columns: int = 8,
) -> Path:
    """Save ``images`` (uint8 ``[H x W x 3]``, one side for all) as a PNG grid, ``columns`` wide.

    With ``captions`` (one per image) each tile gets its caption underneath, wrapped to the tile
    width in PIL's small default font. Returns the path written (parent folders are created).
    """
    if not images:
        raise ValueError("no images to put in a grid")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images")
    tiles = [_tile(image) for image in images]
    tile_w, tile_h = tiles[0].size
    if any(t.size != (tile_w, tile_h) for t in tiles):
        raise ValueError("all grid images must have the same size")
    font = ImageFont.load_default()
    wrapped = [_wrap(c, tile_w, font) for c in captions] if captions is not None else None
    text_h = LINE_HEIGHT * max(len(lines) for lines in wrapped) if wrapped else 0
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    cell_w, cell_h = tile_w + PADDING, tile_h + text_h + PADDING
    sheet = Image.new("RGB", (columns * cell_w + PADDING, rows * cell_h + PADDING), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for index, tile in enumerate(tiles):
        x = PADDING + (index % columns) * cell_w
        y = PADDING + (index // columns) * cell_h
        sheet.paste(tile, (x, y))
        for line_no, line in enumerate(wrapped[index] if wrapped else []):
            draw.text((x, y + tile_h + line_no * LINE_HEIGHT), line, fill=TEXT_COLOR, font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
    return path
