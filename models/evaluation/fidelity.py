"""Shape fidelity: how well the object's outline matches the asked shape drawn in the object's own box.

The analyser (:mod:`models.evaluation.analysis`) names the shape that fits best, and forgives a
soft, lumpy or notched outline as long as no other shape fits it better. This is the stricter
reading a person makes by eye: each of the world's four shapes is drawn in the object's bounding
box, and the overlap of the two masks says how close the outline is to the ideal one.

Notation: ``alpha`` is the object's coverage (each pixel's fraction of object, ``[S x S]`` in
[0, 1]), ``c`` a shape's coverage as the world draws it, ``m(.)`` the mask of a coverage (below),
``(s, cx, cy)`` the side and centre of the shape's bounding box in pixels of the analysed image
(side ``S``, at most 256).

1. the object: :func:`models.evaluation.analysis.find_object` (border-vote background, largest
   component, ``alpha`` by the renderer's blending equation inverted, the ``alpha > 0.5`` mask and
   that mask's bounding box); no object gives IoU 0 with every shape and best match ``none``;
2. the ideal shapes: :func:`models.data.shapes.coverage` of each shape (the world's own outline,
   :func:`~models.data.shapes.unit_outline`, so its orientation and aspect are the world's: apex
   up, a star 0.951 as tall as wide), drawn in the object's box (least squares over its width and
   height; a side the canvas clips is inferred from the other);
3. the masks: ``m(x) = clip((x - 0.5) / (2 MASK_RAMP) + 0.5, 0, 1)``, the mask ``x > 0.5`` with the
   pixels within :data:`MASK_RAMP` of the threshold counted in part. A plain 0/1 mask of a
   10-pixel render flips a whole row when the drawing moves by a fraction of a pixel (renders at
   64 px would score as low as 0.86); the ramp keeps the IoU continuous. A generated object's paler interior
   (``alpha`` 0.6 to 0.9) and soft edge still count as in and out: it is the outline that is scored,
   not the shading;
4. the IoU: ``sum(min(m(alpha), m(c))) / sum(max(m(alpha), m(c)))`` (intersection over union, for
   0/1 masks the usual one);
5. the fit: the mask's box is whole pixels, off by up to about a pixel (a star's or triangle's
   point covers less than half its last pixel), which costs a 10-pixel object a fifth of its
   IoU. So ``(s, cx, cy)`` is refined by a pattern search that maximises the IoU within
   :data:`FIT_BOUNDS` of the box (steps :data:`FIT_STEPS`; moves along each parameter, and
   growths about each edge and corner), started from the box and from the side and centre that
   give the shape the object's area and centroid (clamped to the bounds). A box the canvas clips
   (an eighth of the held-out pictures) gives only its far edges, so there the fit may grow by
   :data:`CLIP_SLACK` of the canvas side as well;
6. the best match: the shape with the highest IoU.

On 400 renders of the world at each side, the IoU with their own shape is at least 0.954 at 64 px
and 0.994 at 256 px (means 0.997 and 0.999), with the best other shape at most 0.91 (a square
read as a circle), and every render matches best as its own shape (``tests/models/test_fidelity.py``
holds floors on a smaller set). A 256x256 image takes about 0.1 s on one busy CPU core.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from models.data.shapes import SHAPES, ShapeSpec, coverage, unit_outline
from models.evaluation.analysis import FoundObject, find_object, prepare, unit_moments

FIT_BOUNDS = (2.0, 1.0, 1.0)  # how far the fit may move (side, centre x, centre y) from the box, pixels
FIT_STEPS = (0.5, 0.25, 0.125, 0.0625, 0.03125)  # pattern-search step sizes, pixels
# The world draws at 4x supersampling, so a drawing's coverage changes only when an edge crosses
# one of its quarter-pixel samples: the IoU is flat over small moves and the search would stall on
# a flat step. At steps this long or longer, a move to a fit not yet tried that keeps the IoU is
# taken too (the tried fits are remembered, so it cannot cycle).
PLATEAU_STEP = 0.125
MAX_TRIES = 1000  # the search stops after drawing a shape this many times (about 100 is usual)
# A box the canvas clips gives only its far edges: the world lets a large object stick out of the
# canvas by up to 0.028 of the canvas side, so there the fit may also grow by this fraction of the
# canvas side (and move by half of it), in longer first steps where they are at most half of that.
CLIP_SLACK = 0.03
CLIP_STEPS = (2.0, 1.0)
WINDOW_MARGIN = 2  # pixels between the farthest the fit can reach and the compared window's edge
MASK_RAMP = 0.125  # a coverage within this of 0.5 counts in part (step 3)
NONE = "none"  # the best match when no object was found

Fit = tuple[float, float, float]  # (side, centre x, centre y), pixels of the analysed image


@dataclass(frozen=True)
class ShapeFidelity:
    """One image's overlap with each shape: ``iou[shape]`` in [0, 1] (0 for all when no object
    was found) and the ``best`` matching shape (``"none"`` when no object was found); ``fits[shape]``
    is where that shape was drawn (side, centre x, centre y) in pixels of the analysed image, of
    side ``side`` (empty and 0 when no object was found)."""

    iou: dict[str, float]
    best: str
    fits: dict[str, Fit] = field(default_factory=dict)
    side: int = 0

    @property
    def found(self) -> bool:
        return self.best != NONE


@functools.lru_cache(maxsize=8)
def unit_extent(shape: str) -> tuple[float, float]:
    """Width and height of ``shape``'s outline in its unit box (1 and 1, a star 1 and 0.951)."""
    outline = unit_outline(shape)
    width, height = outline.max(axis=0) - outline.min(axis=0)
    return float(width), float(height)


@dataclass(frozen=True)
class Window:
    """A square crop of the analysed image: origin ``(x0, y0)``, ``side``, and which of its pixels
    lie on the canvas (``inside``, ``[side x side]`` float32)."""

    x0: int
    y0: int
    side: int
    inside: np.ndarray

    @classmethod
    def around(cls, box: tuple[int, int, int, int], canvas: int, pad: int) -> Window:
        """The square of side ``max(box width, box height) + 2 pad`` centred on ``box``."""
        x0, y0, x1, y1 = box
        side = max(x1 - x0, y1 - y0) + 2 * pad
        ox, oy = (x0 + x1 - side) // 2, (y0 + y1 - side) // 2
        ys, xs = np.indices((side, side))
        inside = (ys + oy >= 0) & (ys + oy < canvas) & (xs + ox >= 0) & (xs + ox < canvas)
        return cls(ox, oy, side, inside.astype(np.float32))

    def crop(self, image: np.ndarray) -> np.ndarray:
        """``image`` ``[S x S]`` cut to the window, zero beyond the canvas: ``[side x side]``."""
        canvas = image.shape[0]
        out = np.zeros((self.side, self.side), np.float32)
        ys0, xs0 = max(0, self.y0), max(0, self.x0)
        ys1, xs1 = min(canvas, self.y0 + self.side), min(canvas, self.x0 + self.side)
        out[ys0 - self.y0 : ys1 - self.y0, xs0 - self.x0 : xs1 - self.x0] = image[ys0:ys1, xs0:xs1]
        return out

    def draw(self, shape: str, fit: Fit) -> np.ndarray:
        """``shape``'s coverage with box ``fit`` as the world draws it at this image's side (the
        window's canvas pixels; zero beyond the canvas): ``[side x side]``."""
        s, cx, cy = fit
        n = self.side
        spec = ShapeSpec(
            "black", "red", shape, "small", "center", s / n, (cx - self.x0) / n, (cy - self.y0) / n
        )
        return coverage(spec, n) * self.inside


def mask(coverage: np.ndarray) -> np.ndarray:
    """The mask ``coverage > 0.5``, with coverages within :data:`MASK_RAMP` of 0.5 counted in
    part (step 3): float32, the shape of ``coverage``, in [0, 1]."""
    graded = (np.asarray(coverage, np.float32) - 0.5) / (2 * MASK_RAMP) + 0.5
    return np.clip(graded, 0.0, 1.0)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks of one shape ``[h x w]`` with values in [0, 1]:
    ``sum(min(a, b)) / sum(max(a, b))`` (0 when both are empty)."""
    union = float(np.maximum(a, b).sum())
    return float(np.minimum(a, b).sum()) / union if union > 0 else 0.0


def _box_fit(shape: str, box: tuple[int, int, int, int], canvas: int) -> Fit:
    """The side and centre that put ``shape``'s box on the object's ``box`` (least squares over
    width and height; an axis the canvas clips is left out, and its far edge kept)."""
    x0, y0, x1, y1 = box
    uw, uh = unit_extent(shape)
    clipped_x, clipped_y = x0 == 0 or x1 == canvas, y0 == 0 or y1 == canvas
    if clipped_x and not clipped_y:
        s = (y1 - y0) / uh
    elif clipped_y and not clipped_x:
        s = (x1 - x0) / uw
    elif clipped_x:  # clipped both ways: the larger side is the nearer
        s = max((x1 - x0) / uw, (y1 - y0) / uh)
    else:
        s = ((x1 - x0) * uw + (y1 - y0) * uh) / (uw * uw + uh * uh)
    cx = x1 - s * uw / 2 if x0 == 0 else x0 + s * uw / 2 if x1 == canvas else (x0 + x1) / 2
    cy = y1 - s * uh / 2 if y0 == 0 else y0 + s * uh / 2 if y1 == canvas else (y0 + y1) / 2
    return s, cx, cy


def _moment_fit(shape: str, target: np.ndarray, window: Window) -> Fit:
    """The side and centre that give ``shape`` the area and centroid of ``target`` (the object's
    mask, the window's crop)."""
    area, off_x, off_y = unit_moments(shape)
    total = float(target.sum())
    ys, xs = np.indices(target.shape) + 0.5  # pixel centres
    mean_x = float((target * xs).sum()) / total + window.x0
    mean_y = float((target * ys).sum()) / total + window.y0
    s = (total / area) ** 0.5
    return s, mean_x - off_x * s, mean_y - off_y * s


def _moves(shape: str, step: float) -> list[Fit]:
    """Pattern-search moves: each parameter by ±step, and the side by ±step about each edge and
    each corner (the box's far edges or corner move, the others stay)."""
    uw, uh = unit_extent(shape)
    moves: list[Fit] = [(step, 0.0, 0.0), (-step, 0.0, 0.0), (0.0, step, 0.0)]
    moves += [(0.0, -step, 0.0), (0.0, 0.0, step), (0.0, 0.0, -step)]
    for g in (step, -step):
        moves += [(g, sx * g * uw / 2, 0.0) for sx in (1, -1)]  # about the left or right edge
        moves += [(g, 0.0, sy * g * uh / 2) for sy in (1, -1)]  # about the top or bottom edge
        moves += [(g, sx * g * uw / 2, sy * g * uh / 2) for sx in (1, -1) for sy in (1, -1)]  # a corner
    return moves


def _key(fit: Fit) -> Fit:
    """``fit`` rounded, so that a fit reached by two paths of moves is recognised."""
    return round(fit[0], 6), round(fit[1], 6), round(fit[2], 6)


def _fit_shape(
    shape: str,
    target: np.ndarray,
    window: Window,
    anchor: Fit,
    starts: Sequence[Fit],
    bounds: Fit = FIT_BOUNDS,
    steps: Sequence[float] = FIT_STEPS,
) -> tuple[float, Fit]:
    """The highest IoU of ``target`` (the object's mask, the window's crop) with ``shape`` drawn within
    ``bounds`` of ``anchor``, by pattern search in ``steps`` from the best of ``starts``; and its fit."""

    tried: dict[Fit, float] = {}  # a move back revisits a fit

    def score(fit: Fit) -> float:
        key = _key(fit)
        if key not in tried:
            tried[key] = iou(target, mask(window.draw(shape, fit)))
        return tried[key]

    best_iou, best = max((score(start), start) for start in starts)
    for step in steps:
        improved = True
        while improved and len(tried) < MAX_TRIES:
            improved = False
            for move in _moves(shape, step):
                fit = (best[0] + move[0], best[1] + move[1], best[2] + move[2])
                if any(abs(v - a) > bound for v, a, bound in zip(fit, anchor, bounds, strict=True)):
                    continue
                untried = _key(fit) not in tried
                value = score(fit)
                if value > best_iou or (value == best_iou and untried and step >= PLATEAU_STEP):
                    best_iou, best, improved = value, fit, True
    return best_iou, best


def _clamp(fit: Fit, anchor: Fit) -> Fit:
    s, cx, cy = (
        float(np.clip(v, a - bound, a + bound)) for v, a, bound in zip(fit, anchor, FIT_BOUNDS, strict=True)
    )
    return s, cx, cy


def object_fidelity(found: FoundObject) -> ShapeFidelity:
    """Steps 2-6 for an object :func:`~models.evaluation.analysis.find_object` found."""
    canvas = found.alpha.shape[0]
    x0, y0, x1, y1 = found.box
    clipped = min(x0, y0) == 0 or max(x1, y1) == canvas
    slack = CLIP_SLACK * canvas if clipped else 0.0
    bounds = (FIT_BOUNDS[0] + slack, FIT_BOUNDS[1] + slack / 2, FIT_BOUNDS[2] + slack / 2)
    steps = (*(step for step in CLIP_STEPS if step <= slack / 2), *FIT_STEPS)
    # the drawing reaches at most half its side's bound plus its centre's bound beyond the anchor
    window = Window.around(found.box, canvas, math.ceil(bounds[0] / 2 + max(bounds[1:])) + WINDOW_MARGIN)
    target = mask(window.crop(found.alpha))  # [side x side]
    ious: dict[str, float] = {}
    fits: dict[str, Fit] = {}
    for shape in SHAPES:
        anchor = _box_fit(shape, found.box, canvas)
        starts = [anchor] if clipped else [anchor, _clamp(_moment_fit(shape, target, window), anchor)]
        ious[shape], fits[shape] = _fit_shape(shape, target, window, anchor, starts, bounds, steps)
    return ShapeFidelity(iou=ious, best=max(ious, key=lambda shape: ious[shape]), fits=fits, side=canvas)


def shape_fidelity(image: np.ndarray) -> ShapeFidelity:
    """The IoU of a uint8 ``[H x W x 3]`` image's object with each of the world's shapes drawn in
    its own box, and the best-matching shape (``"none"`` and IoU 0 when no object is found)."""
    _, found = find_object(image)
    if found is None:
        return ShapeFidelity(iou=dict.fromkeys(SHAPES, 0.0), best=NONE)
    return object_fidelity(found)


# -- a picture of the fit ------------------------------------------------------------------------
TILE = 128  # the side of a picture of a fit
CROP = 1.5  # it shows this many times the fitted side around the object
OUTLINE_RGB = (255, 0, 255)  # the fitted shape's outline: magenta, no object or background color


def draw_fit(image: np.ndarray, shape: str, fit: Fit | None, tile: int = TILE) -> np.ndarray:
    """The object of a uint8 ``[H x W x 3]`` image with ``shape`` outlined where it was fitted
    (``ShapeFidelity.fits[shape]``): :data:`CROP` times the fitted side around it, scaled to
    ``tile`` (nearest neighbour, so the pixels stay visible; black beyond the canvas), uint8
    ``[tile x tile x 3]``. Without a fit (no object), the whole image scaled."""
    pixels = Image.fromarray(prepare(image).astype(np.uint8))  # the analysed image, side <= 256
    if fit is None:
        return np.asarray(pixels.resize((tile, tile), Image.Resampling.BOX))
    s, cx, cy = fit
    half = round(CROP * s / 2)
    x0, y0 = round(cx) - half, round(cy) - half
    scale = tile / (2 * half)
    crop = pixels.crop((x0, y0, x0 + 2 * half, y0 + 2 * half)).resize((tile, tile), Image.Resampling.NEAREST)
    outline = (unit_outline(shape) * s + (cx - x0, cy - y0)) * scale  # [V x 2], tile pixels
    points = [(float(x), float(y)) for x, y in outline]
    ImageDraw.Draw(crop).line([*points, points[0]], fill=OUTLINE_RGB, width=1)
    return np.asarray(crop)


# -- over an evaluation set ------------------------------------------------------------------------
WORST_IMAGES = 4  # the report shows this many of the worst images per asked shape


@dataclass(frozen=True)
class FidelitySummary:
    """Shape fidelity over a set of images, counted over those whose prompt names a shape.

    ``mean_iou`` is the mean IoU with the asked shape; ``best_match`` the fraction of images whose
    outline matches the asked shape better than every other shape. ``per_shape[asked]`` holds
    ``n``, ``mean_iou`` and ``best_match`` for the images that asked for that shape, and
    ``worst[asked]`` their indices in the set, lowest IoU with the asked shape first.
    """

    n: int
    mean_iou: float
    best_match: float
    per_shape: dict[str, dict[str, float]]
    worst: dict[str, list[int]]


def summarize(
    results: Sequence[ShapeFidelity], asked_shapes: Sequence[str | None], worst: int = WORST_IMAGES
) -> FidelitySummary:
    """Aggregate per-image :class:`ShapeFidelity` by the shape each prompt asked for (``None``:
    the prompt names no shape, not counted)."""
    if len(results) != len(asked_shapes):
        raise ValueError(f"{len(results)} results for {len(asked_shapes)} asked shapes")
    rows = [
        (i, r.iou[a], r.best == a, a) for i, (r, a) in enumerate(zip(results, asked_shapes, strict=True)) if a
    ]
    per_shape: dict[str, dict[str, float]] = {}
    lowest: dict[str, list[int]] = {}
    for shape in SHAPES:
        mine = [row for row in rows if row[3] == shape]
        if not mine:
            continue
        per_shape[shape] = {
            "n": len(mine),
            "mean_iou": float(np.mean([row[1] for row in mine])),
            "best_match": float(np.mean([row[2] for row in mine])),
        }
        lowest[shape] = [row[0] for row in sorted(mine, key=lambda row: row[1])[:worst]]
    return FidelitySummary(
        n=len(rows),
        mean_iou=float(np.mean([row[1] for row in rows])) if rows else 0.0,
        best_match=float(np.mean([row[2] for row in rows])) if rows else 0.0,
        per_shape=per_shape,
        worst=lowest,
    )
