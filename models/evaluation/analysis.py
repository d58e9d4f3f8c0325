"""Read a picture of the shapes world back into attributes, without any model.

:func:`analyze` takes a uint8 ``[H x W x 3]`` image (any square side; sides above
:data:`ANALYSIS_SIDE` are box-filtered down to it first) and reports the background, and the
color, shape, size and position of the largest object. :func:`score` compares that with the
attributes a prompt asked for. Steps:

1. background: each border pixel votes for its nearest background color; the majority wins;
2. object: pixels far from the background, largest 8-connected component (speckle ignored);
   its colour ``c`` is the median of the component's pixels farthest from the background (the
   top quarter, :data:`CORE_QUANTILE`), which blur and anti-aliased edges do not reach;
3. coverage: each pixel's fraction of object, ``alpha = <x - bg, c - bg> / |c - bg|^2`` (the
   renderer's own blending equation, inverted), thresholded at 0.5 for the object mask;
4. color: the palette color nearest to ``c``;
5. size and position: from the mask's bounding box (side threshold :data:`SIZE_THRESHOLD`,
   half-way between 0.16 and 0.30; centre on the 3x3 grid);
6. shape: the shape whose own drawing best matches ``alpha`` (L1), each shape drawn in the
   measured box and at the size and centre that reproduce the object's area and centroid; when
   no sharp drawing fits (a soft, generated image), the drawings are also compared blurred.

The ground-truth renders of :mod:`models.data.shapes` score 100% (``tests/models/test_analysis.py``
checks it at 64 and 256 px); noise and random blobs score near chance; mild blur, color drift
and pixel noise cost a few percent at most.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image

from models.data.shapes import BACKGROUNDS, COLORS, SHAPES, ShapeSpec, coverage, unit_outline

ATTRIBUTES: tuple[str, ...] = ("color", "shape", "size", "position", "background")
ANALYSIS_SIDE = 256  # larger images are box-filtered to this side first
SIZE_THRESHOLD = 0.23  # bounding-box side / canvas side: below is small, above is large
MIN_CONTRAST = 40.0  # RGB distance from the background for a pixel to count as object (step 2)
CORE_QUANTILE = 0.75  # the object color is the median of the pixels this far up the distance ranking
# Generated images are softer than renders: templates are also compared blurred by these Gaussian
# sigmas (pixels at 64 px, scaled with the side).
BLUR_SIGMAS: tuple[float, ...] = (0.5, 1.0, 1.6)
SHARP_FIT = 0.2  # a sharp drawing this close (L1 / area) needs no blurred comparison
SHAPE_SIDE = 128  # shapes are matched at no more than this side
MIN_SIDE = 0.06  # a component smaller than this (box side / canvas) is not an object
MAX_SIDE = 0.5  # nor one larger than this: noise, or a canvas filled with paint

_BACKGROUND_NAMES = tuple(BACKGROUNDS)
_BACKGROUND_RGB = np.array([BACKGROUNDS[b] for b in _BACKGROUND_NAMES], np.float32)  # [B x 3]
_COLOR_NAMES = tuple(COLORS)
_COLOR_RGB = np.array([COLORS[c] for c in _COLOR_NAMES], np.float32)  # [C x 3]
_GRID = ("top", "", "bottom"), ("left", "", "right")  # row words, column words


@dataclass(frozen=True)
class ImageAnalysis:
    """What the image shows. The object attributes are ``None`` when no object was ``found``."""

    background: str
    color: str | None
    shape: str | None
    size: str | None
    position: str | None
    found: bool


# -- connected components --------------------------------------------------------------------------
def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean ``[H x W]`` mask, as a boolean mask.

    Runs of each row are the nodes; runs in neighbouring rows that touch (diagonals included) are
    joined; labels are found by min-propagation with pointer jumping, all in numpy.
    """
    h, w = mask.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)  # [H x (W + 1)]: +1 where a run starts, -1 after it ends
    run_rows, run_starts = np.nonzero(edges == 1)
    _, run_ends = np.nonzero(edges == -1)  # exclusive ends, same row-major order
    n = len(run_rows)
    if n == 0:
        return np.zeros_like(mask, bool)
    stride = w + 3  # keys of different rows never interleave
    start_keys = run_rows * stride + run_starts
    end_keys = run_rows * stride + run_ends - 1
    # Run j in row r touches run i in row r - 1 when i.start <= j.end + 1 and i.end >= j.start - 1.
    prev = (run_rows - 1) * stride
    lo = np.searchsorted(end_keys, prev + run_starts - 1, side="left")
    hi = np.searchsorted(start_keys, prev + run_ends, side="right")  # j.end + 1 = run_ends
    counts = np.maximum(hi - lo, 0)
    child = np.repeat(np.arange(n), counts)
    parent = np.repeat(lo, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    labels = np.arange(n)
    while True:
        before = labels.copy()
        np.minimum.at(labels, child, labels[parent])
        np.minimum.at(labels, parent, labels[child])
        labels = labels[labels]  # pointer jumping
        if np.array_equal(labels, before):
            break
    sizes = np.bincount(labels, weights=run_ends - run_starts, minlength=n)
    keep = np.nonzero(labels == np.argmax(sizes))[0]
    out = np.zeros((h, w + 1), np.int32)
    np.add.at(out, (run_rows[keep], run_starts[keep]), 1)
    np.add.at(out, (run_rows[keep], run_ends[keep]), -1)
    return np.cumsum(out, axis=1)[:, :w] > 0


# -- the analysis ----------------------------------------------------------------------------------
def prepare(image: np.ndarray) -> np.ndarray:
    """float32 ``[S x S x 3]``, box-filtered to at most :data:`ANALYSIS_SIDE`."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] < 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"expected a square [S x S x 3] image, got shape {image.shape}")
    image = image[..., :3]
    if image.dtype != np.uint8:
        image = np.clip(np.asarray(image, np.float32), 0, 255).astype(np.uint8)
    if max(image.shape[:2]) > ANALYSIS_SIDE:
        image = np.asarray(
            Image.fromarray(image).resize((ANALYSIS_SIDE, ANALYSIS_SIDE), Image.Resampling.BOX)
        )
    return image.astype(np.float32)


def _background(image: np.ndarray) -> int:
    """Index of the background: the majority vote of the border pixels' nearest background."""
    border = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])  # [P x 3]
    nearest = np.argmin(((border[:, None] - _BACKGROUND_RGB[None]) ** 2).sum(-1), axis=1)
    return int(np.bincount(nearest, minlength=len(_BACKGROUND_NAMES)).argmax())


def _grid_cell(center: float) -> int:
    return min(2, max(0, int(center * 3)))


def _position(cx: float, cy: float) -> str:
    row, col = _GRID[0][_grid_cell(cy)], _GRID[1][_grid_cell(cx)]
    return " ".join(w for w in (row, col) if w) or "center"


@functools.lru_cache(maxsize=8)
def unit_moments(shape: str) -> tuple[float, float, float]:
    """Area and centroid (x, y) of ``shape`` in its unit box centred at the origin (shoelace)."""
    x, y = unit_outline(shape).T
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2
    return (
        float(area),
        float(((x + xn) * cross).sum() / (6 * area)),
        float(((y + yn) * cross).sum() / (6 * area)),
    )


@functools.lru_cache(maxsize=256)
def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """float32 ``[n x n]`` matrix that blurs a length-``n`` signal with a Gaussian of ``sigma``
    pixels (zero beyond the ends)."""
    offsets = np.arange(n)[:, None] - np.arange(n)[None, :]
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum(axis=1, keepdims=True).max()).astype(np.float32)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a small ``[h x w]`` array. (einsum, not ``@``: BLAS threads cost
    more than they save on arrays this small.)"""
    h, w = image.shape
    columns = np.einsum("ij,jk->ik", _gaussian_matrix(h, sigma), image)  # [h x w]
    return np.einsum("ik,lk->il", columns, _gaussian_matrix(w, sigma))  # [h x w]


def _template_error(
    alpha: np.ndarray, shape: str, fit: tuple[float, float, float], sigmas: tuple[float, ...]
) -> float:
    """L1 distance between ``alpha`` and ``shape`` drawn with ``fit`` = (box side, centre x,
    centre y) in pixels, blurred by each of ``sigmas`` (pixels at 64 px); the best counts."""
    n = alpha.shape[0]
    side, cx, cy = fit
    template = coverage(ShapeSpec("black", "red", shape, "small", "center", side / n, cx / n, cy / n), n)
    errors = []
    for sigma in sigmas:
        sigma_px = sigma * n / 64
        if sigma_px < 0.3:
            errors.append(float(np.abs(template - alpha).sum()))
            continue
        # Blur only a crop around the object (the template's box, plus 3 sigma).
        pad = int(np.ceil(3 * sigma_px)) + 1
        x0, x1 = max(0, int(cx - side / 2) - pad), min(n, int(np.ceil(cx + side / 2)) + pad)
        y0, y1 = max(0, int(cy - side / 2) - pad), min(n, int(np.ceil(cy + side / 2)) + pad)
        blurred = _blur(template[y0:y1, x0:x1], round(sigma_px, 3))  # [h x w]
        inside = alpha[y0:y1, x0:x1]
        errors.append(float(np.abs(blurred - inside).sum() + alpha.sum() - inside.sum()))
    return min(errors)


def _fits(
    alpha: np.ndarray, box: tuple[float, float, float, float]
) -> dict[str, list[tuple[float, float, float]]]:
    """Two (side, centre x, centre y) fits per shape, in pixels: the mask's bounding box ``box``
    (x0, y0, x1, y1, exclusive), and the side and centre that give the shape ``alpha``'s area and
    centroid (sub-pixel, better for small objects, but wrong when the canvas clips the object)."""
    n = alpha.shape[0]
    x0, y0, x1, y1 = box
    extent = max(x1 - x0, y1 - y0)
    # A box clipped by the canvas is extended outwards to a square.
    x0, x1 = (x1 - extent, x1) if x0 == 0 else (x0, x0 + extent) if x1 == n else (x0, x1)
    y0, y1 = (y1 - extent, y1) if y0 == 0 else (y0, y0 + extent) if y1 == n else (y0, y1)
    total = float(alpha.sum())
    ys, xs = np.indices(alpha.shape) + 0.5  # pixel centres
    mean_x, mean_y = float((alpha * xs).sum() / total), float((alpha * ys).sum() / total)
    fits: dict[str, list[tuple[float, float, float]]] = {}
    for shape in SHAPES:
        area, off_x, off_y = unit_moments(shape)
        side = (total / area) ** 0.5
        fits[shape] = [
            (extent, (x0 + x1) / 2, (y0 + y1) / 2),
            (side, mean_x - off_x * side, mean_y - off_y * side),
        ]
    return fits


def _shape(alpha: np.ndarray, box: tuple[int, int, int, int]) -> str:
    """The shape whose drawing best matches ``alpha`` (the object's coverage, ``[S x S]``).

    Each shape is drawn with both of its :func:`_fits`. A sharp drawing that explains all but
    :data:`SHARP_FIT` of the object's area settles it; otherwise (a soft, generated image) the
    drawings are also compared blurred by :data:`BLUR_SIGMAS`. Sides above :data:`SHAPE_SIDE` are
    box-filtered to it first.
    """
    factor = max(1, alpha.shape[0] // SHAPE_SIDE)
    while alpha.shape[0] % factor:
        factor -= 1
    n = alpha.shape[0] // factor
    alpha = alpha.reshape(n, factor, n, factor).mean(axis=(1, 3))  # [n x n]
    fits = _fits(alpha, tuple(v / factor for v in box))
    for sigmas in ((0.0,), (0.0, *BLUR_SIGMAS)):
        errors = [min(_template_error(alpha, shape, fit, sigmas) for fit in fits[shape]) for shape in SHAPES]
        if min(errors) <= SHARP_FIT * alpha.sum():
            break
    return SHAPES[int(np.argmin(errors))]


@dataclass(frozen=True)
class FoundObject:
    """The object :func:`find_object` found, in the analysed image (side ``S``, see :func:`prepare`).

    ``alpha`` is the object's coverage (step 3), zero beyond 2 pixels of ``box``; ``mask`` is the
    largest component of ``alpha > 0.5``; ``box`` is its bounding box (x0, y0, x1, y1), exclusive.
    """

    color: np.ndarray  # [3] float32: the object's RGB (step 2)
    alpha: np.ndarray  # [S x S] float32 in [0, 1]
    mask: np.ndarray  # [S x S] bool
    box: tuple[int, int, int, int]


def find_object(image: np.ndarray) -> tuple[int, FoundObject | None]:
    """Steps 1-3 on a uint8 ``[H x W x 3]`` image: the background's index in :data:`BACKGROUNDS`
    and the object, or ``None`` when there is none (nothing distinct from the background, or a box
    side outside [:data:`MIN_SIDE`, :data:`MAX_SIDE`] of the canvas)."""
    pixels = prepare(image)  # [S x S x 3]
    side = pixels.shape[0]
    b = _background(pixels)
    background = _BACKGROUND_RGB[b]
    distance = np.linalg.norm(pixels - background, axis=-1)  # [S x S]
    component = largest_component(distance > MIN_CONTRAST)
    if not component.any():
        return b, None
    inside = distance[component]
    core = pixels[component][
        inside >= np.quantile(inside, CORE_QUANTILE)
    ]  # [K x 3], the most distinct pixels
    color = np.median(core, axis=0)
    direction = color - background
    alpha = np.clip((pixels - background) @ direction / max(float(direction @ direction), 1e-6), 0.0, 1.0)
    mask = largest_component(alpha > 0.5)
    if not mask.any():
        return b, None
    rows, cols = np.nonzero(mask)
    box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)  # x0, y0, x1, y1
    extent = max(box[2] - box[0], box[3] - box[1]) / side
    if not MIN_SIDE <= extent <= MAX_SIDE:
        return b, None
    near = np.zeros_like(mask)
    near[max(0, box[1] - 2) : box[3] + 2, max(0, box[0] - 2) : box[2] + 2] = True
    return b, FoundObject(color=color, alpha=np.where(near, alpha, 0.0), mask=mask, box=box)


def analyze(image: np.ndarray) -> ImageAnalysis:
    """Background and object attributes of a uint8 ``[H x W x 3]`` image of the shapes world."""
    b, found = find_object(image)
    if found is None:
        return ImageAnalysis(_BACKGROUND_NAMES[b], None, None, None, None, found=False)
    side = found.alpha.shape[0]
    box = found.box
    extent = max(box[2] - box[0], box[3] - box[1]) / side
    nearest_color = int(np.argmin(((found.color - _COLOR_RGB) ** 2).sum(-1)))
    return ImageAnalysis(
        background=_BACKGROUND_NAMES[b],
        color=_COLOR_NAMES[nearest_color],
        shape=_shape(found.alpha, box),
        size="small" if extent < SIZE_THRESHOLD else "large",
        position=_position((box[0] + box[2]) / 2 / side, (box[1] + box[3]) / 2 / side),
        found=True,
    )


def _asked(asked: object, attribute: str) -> object:
    if isinstance(asked, Mapping):
        return asked.get(attribute)
    return getattr(asked, attribute, None)


def score(analysis: ImageAnalysis, asked: object) -> dict[str, bool]:
    """Which asked attributes the image has: ``{attribute: correct}`` for each attribute the
    caption names (``CaptionAttributes`` or a mapping; ``None`` means not asked), plus ``all``."""
    out: dict[str, bool] = {}
    for attribute in ATTRIBUTES:
        value = _asked(asked, attribute)
        if value is not None:
            out[attribute] = getattr(analysis, attribute) == value
    out["all"] = all(out.values())
    return out
