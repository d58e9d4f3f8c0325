"""The shapes world: one colored shape on a plain background, with a caption that describes it.

No pretrained model can be downloaded here, so the project trains its own small model on a world
it generates itself. Every picture holds one object on a plain background:

- background: ``white`` (255,255,255), ``black`` (0,0,0) or ``gray`` (128,128,128);
- color: ``red``, ``green``, ``blue``, ``yellow``, ``purple``, ``orange`` (:data:`COLORS`);
- shape: ``circle``; ``square`` (axis-aligned); ``triangle`` (isosceles, apex up, as wide as
  tall); ``star`` (five points, apex up, inner radius 0.45 of the outer, as wide as the box,
  0.951 of it tall);
- size: the side of the object's bounding box, ``small`` 0.16 or ``large`` 0.30 of the canvas,
  times a uniform jitter in [0.9, 1.1];
- position: a 3x3 grid; the bounding box's centre is at the cell centre (1/6, 1/2 or 5/6 of the
  side) plus a uniform jitter in [-0.03, 0.03] of the side on each axis. A large object in a
  border cell can stick out of the canvas by up to 0.03 of the side; it is clipped, as a camera
  would clip it.

Coordinates are fractions of the canvas side, ``x`` to the right and ``y`` down from the top left.

Captions (:func:`caption_for`) come from :data:`TEMPLATES`, six phrasings of the same facts, so
a model learns the words rather than one sentence. Color and shape are always named; size,
position and background are each left out with probability :data:`OMIT_PROB` (0.15, independently)
and are then drawn at random like the rest of the picture. :func:`parse_caption` reads any of the
templates (and plain user prompts) back into :class:`CaptionAttributes`.

:class:`ShapesWorld` is deterministic by seed and random access: training example ``i`` of stream
``s`` depends only on ``(seed, s, i)``. The held-out evaluation set (:meth:`ShapesWorld.heldout`)
comes from a separate seed stream, names all five attributes in every caption, and its first
:data:`HELDOUT_EXCLUDED` captions never occur in the training stream (an example whose caption
equals one of them is redrawn). Held-out and training pictures also differ in their jitter,
which is continuous, so no training picture equals a held-out one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
ShapeName = Literal["circle", "square", "triangle", "star"]

BACKGROUNDS: dict[str, RGB] = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
COLORS: dict[str, RGB] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
}
SHAPES: tuple[ShapeName, ...] = ("circle", "square", "triangle", "star")
SIZES: dict[str, float] = {"small": 0.16, "large": 0.30}  # bounding-box side / canvas side
SIZE_JITTER = 0.10  # the side is multiplied by U(1 - j, 1 + j)
_THIRDS = (1 / 6, 1 / 2, 5 / 6)
POSITIONS: dict[str, tuple[float, float]] = {  # name -> (x, y) of the cell centre
    "top left": (_THIRDS[0], _THIRDS[0]),
    "top": (_THIRDS[1], _THIRDS[0]),
    "top right": (_THIRDS[2], _THIRDS[0]),
    "left": (_THIRDS[0], _THIRDS[1]),
    "center": (_THIRDS[1], _THIRDS[1]),
    "right": (_THIRDS[2], _THIRDS[1]),
    "bottom left": (_THIRDS[0], _THIRDS[2]),
    "bottom": (_THIRDS[1], _THIRDS[2]),
    "bottom right": (_THIRDS[2], _THIRDS[2]),
}
POSITION_JITTER = 0.03  # the box centre is the cell centre + U(-j, j) on each axis
STAR_INNER_RATIO = 0.45
CANVAS = 1024  # the world's native resolution; other sides are the same picture resized

_ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "background": tuple(BACKGROUNDS),
    "color": tuple(COLORS),
    "shape": SHAPES,
    "size": tuple(SIZES),
    "position": tuple(POSITIONS),
}

OMIT_PROB = 0.15  # each of size, position and background is left out of a caption this often
TEMPLATES: tuple[str, ...] = (
    "canonical",  # a small red circle in the top left on a white background
    "at_over",  # a small red circle at the top left over a white background
    "terse",  # small red circle, top left, white background
    "corner",  # a red circle (small) in the top left corner on white
    "background_first",  # a white background with a small red circle in the top left
    "image_of",  # an image of a small red circle, top left, on white
)
# The canonical template is drawn more often: it is the phrasing of the issue and of user prompts.
TEMPLATE_WEIGHTS: tuple[float, ...] = (0.35, 0.13, 0.13, 0.13, 0.13, 0.13)

HELDOUT_EXCLUDED = 200  # this many held-out captions are kept out of every training stream
_TRAIN_STREAM, _HELDOUT_STREAM, _REDRAW, _SHAPE_PICK = 0x7A1, 0x4E1D, 0xD4A, 0x5A9E


# -- specs -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShapeSpec:
    """One picture of the world, with its jitters resolved.

    ``side_fraction`` is the bounding-box side and ``center_x``/``center_y`` its centre, as
    fractions of the canvas side (``y`` down from the top).
    """

    background: str
    color: str
    shape: str
    size: str
    position: str
    side_fraction: float
    center_x: float
    center_y: float


@dataclass(frozen=True)
class CaptionAttributes:
    """The attributes a caption names; ``None`` where the caption leaves one out."""

    color: str | None = None
    shape: str | None = None
    size: str | None = None
    position: str | None = None
    background: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "color": self.color,
            "shape": self.shape,
            "size": self.size,
            "position": self.position,
            "background": self.background,
        }


@dataclass
class Example:
    """An image ``[H x W x 3]`` uint8, its caption, and the spec it was drawn from (``None`` for
    images that do not come from the shapes world)."""

    image: np.ndarray
    caption: str
    spec: ShapeSpec | None = None


def _choose(rng: np.random.Generator, options: tuple[str, ...], fixed: str | None) -> str:
    """Always consume one draw, so fixing one attribute leaves the others' draws unchanged."""
    index = int(rng.integers(len(options)))
    if fixed is None:
        return options[index]
    if fixed not in options:
        raise ValueError(f"unknown value {fixed!r}; expected one of {options}")
    return fixed


def sample_spec(
    rng: np.random.Generator,
    *,
    background: str | None = None,
    color: str | None = None,
    shape: str | None = None,
    size: str | None = None,
    position: str | None = None,
) -> ShapeSpec:
    """Draw a picture of the world; any attribute passed is kept, the rest (and the jitters) drawn."""
    background = _choose(rng, tuple(BACKGROUNDS), background)
    color = _choose(rng, tuple(COLORS), color)
    shape = _choose(rng, SHAPES, shape)
    size = _choose(rng, tuple(SIZES), size)
    position = _choose(rng, tuple(POSITIONS), position)
    jitter = rng.uniform(-1.0, 1.0, size=3)  # side, x, y
    cell_x, cell_y = POSITIONS[position]
    return ShapeSpec(
        background=background,
        color=color,
        shape=shape,
        size=size,
        position=position,
        side_fraction=float(SIZES[size] * (1.0 + SIZE_JITTER * jitter[0])),
        center_x=float(cell_x + POSITION_JITTER * jitter[1]),
        center_y=float(cell_y + POSITION_JITTER * jitter[2]),
    )


# -- rendering -------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def unit_outline(shape: str) -> np.ndarray:
    """The outline of ``shape`` in its unit bounding box centred at the origin: ``[V x 2]`` (x, y)."""
    if shape == "square":
        return np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    if shape == "triangle":
        return np.array([[0.0, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    if shape == "circle":
        angles = np.linspace(0.0, 2.0 * math.pi, 128, endpoint=False)
        return 0.5 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if shape == "star":
        # Ten vertices from the top point clockwise, alternating outer radius 1 and inner 0.45.
        angles = -math.pi / 2 + np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, STAR_INNER_RATIO)
        points = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        # Scale so the star is exactly as wide as the box, and centre its bounding box.
        lo, hi = points.min(axis=0), points.max(axis=0)
        return (points - (lo + hi) / 2) / (hi[0] - lo[0])
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _supersampling(size: int) -> int:
    return 4 if size <= 512 else 2


def _coverage_patch(spec: ShapeSpec, size: int) -> tuple[int, int, np.ndarray]:
    """The object's coverage inside its bounding box (plus a pixel): ``(y0, x0, patch [h x w])``.

    Drawn at 2-4x supersampling inside that box only, then box-filtered, so the cost grows with
    the object, not the canvas.
    """
    ss = _supersampling(size)
    outline = unit_outline(spec.shape) * spec.side_fraction + (spec.center_x, spec.center_y)
    half = spec.side_fraction / 2
    x0 = max(0, math.floor((spec.center_x - half) * size) - 1)
    y0 = max(0, math.floor((spec.center_y - half) * size) - 1)
    x1 = min(size, math.ceil((spec.center_x + half) * size) + 1)
    y1 = min(size, math.ceil((spec.center_y + half) * size) + 1)
    if x1 <= x0 or y1 <= y0:
        return 0, 0, np.zeros((0, 0), np.float32)
    # Pixel i of the supersampled patch covers [i, i + 1); PIL fills the pixels whose centre
    # (i + 0.5) is inside, hence the -0.5.
    points = (outline * size - (x0, y0)) * ss - 0.5
    mask = Image.new("L", ((x1 - x0) * ss, (y1 - y0) * ss), 0)
    ImageDraw.Draw(mask).polygon([tuple(p) for p in points.tolist()], fill=255)
    return y0, x0, np.asarray(mask.reduce(ss), dtype=np.float32) / 255.0  # box filter


def coverage(spec: ShapeSpec, size: int) -> np.ndarray:
    """The fraction of each pixel the object covers: float32 ``[size x size]`` in [0, 1]."""
    alpha = np.zeros((size, size), np.float32)
    y0, x0, patch = _coverage_patch(spec, size)
    alpha[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]] = patch
    return alpha


def render(spec: ShapeSpec, size: int = CANVAS) -> np.ndarray:
    """The picture of ``spec`` at ``size`` x ``size``: uint8 ``[size x size x 3]``.

    Rendering at ``size`` directly gives the 1024x1024 picture resized, up to anti-aliasing.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    background = np.array(BACKGROUNDS[spec.background], np.float32)
    color = np.array(COLORS[spec.color], np.float32)
    image = np.empty((size, size, 3), np.uint8)
    image[...] = BACKGROUNDS[spec.background]
    y0, x0, patch = _coverage_patch(spec, size)  # [h x w]
    blended = background + patch[..., None] * (color - background)  # [h x w x 3]
    image[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]] = np.rint(blended).astype(np.uint8)
    return image


# -- captions --------------------------------------------------------------------------------------
def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def _position_phrase(position: str, template: str) -> str:
    """How a template says where the object is (without the article-less terse form)."""
    if template == "corner":
        if " " in position:
            return f"in the {position} corner"
        return {"center": "in the middle", "top": "at the top", "bottom": "at the bottom"}.get(
            position, f"on the {position}"
        )
    preposition = "at" if template == "at_over" else "in"
    return f"{preposition} the {position}"


def compose_caption(template: str, attributes: CaptionAttributes) -> str:
    """The caption of ``template`` (one of :data:`TEMPLATES`) naming ``attributes``; color and shape
    are required, the others may be ``None`` (left out)."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")
    if attributes.color is None or attributes.shape is None:
        raise ValueError("a caption always names the color and the shape")
    words = attributes.as_dict()
    size, color, shape = words["size"], words["color"], words["shape"]
    position, background = words["position"], words["background"]
    noun = " ".join(w for w in (size, color, shape) if w)  # "small red circle"
    if template == "corner":
        noun = f"{color} {shape}" + (f" ({size})" if size else "")
    where = _position_phrase(position, template) if position else None
    if template == "terse":
        return ", ".join(p for p in (noun, position, background and f"{background} background") if p)
    if template == "image_of":
        parts = [f"an image of {_article(noun)} {noun}", position, background and f"on {background}"]
        return ", ".join(p for p in parts if p)
    if template == "background_first" and background:
        return " ".join(p for p in (f"a {background} background with {_article(noun)} {noun}", where) if p)
    ground = {
        "at_over": f"over a {background} background",
        "corner": f"on {background}",
    }.get(template, f"on a {background} background")
    return " ".join(p for p in (f"{_article(noun)} {noun}", where, background and ground) if p)


def caption_for(
    spec: ShapeSpec, rng: np.random.Generator, *, full: bool = False
) -> tuple[str, CaptionAttributes]:
    """A caption of ``spec`` and the attributes it names.

    Color and shape are always named; with ``full`` every attribute is, otherwise each of size,
    position and background is left out with probability :data:`OMIT_PROB`. The template is drawn
    with :data:`TEMPLATE_WEIGHTS`.
    """
    template = TEMPLATES[int(rng.choice(len(TEMPLATES), p=TEMPLATE_WEIGHTS))]
    keep = np.ones(3, bool) if full else rng.random(3) >= OMIT_PROB  # size, position, background
    attributes = CaptionAttributes(
        color=spec.color,
        shape=spec.shape,
        size=spec.size if keep[0] else None,
        position=spec.position if keep[1] else None,
        background=spec.background if keep[2] else None,
    )
    return compose_caption(template, attributes), attributes


# Longest phrases first, so "top left" wins over "top" and "left".
_POSITION_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("top left", r"\b(top|upper)[ -]?left\b"),
        ("top right", r"\b(top|upper)[ -]?right\b"),
        ("bottom left", r"\b(bottom|lower)[ -]?left\b"),
        ("bottom right", r"\b(bottom|lower)[ -]?right\b"),
        ("center", r"\b(center|centre|middle)\b"),
        ("top", r"\b(top|upper)\b"),
        ("bottom", r"\b(bottom|lower)\b"),
        ("left", r"\bleft\b"),
        ("right", r"\bright\b"),
    )
)
_SIZE_WORDS = {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large"}
_BACKGROUND_WORDS = {"white": "white", "black": "black", "gray": "gray", "grey": "gray"}


def _first_word(text: str, vocabulary: dict[str, str]) -> str | None:
    """The value of the vocabulary word that occurs first in ``text``, if any."""
    return next((vocabulary[word] for word in re.findall(r"\w+", text) if word in vocabulary), None)


def parse_caption(caption: str) -> CaptionAttributes:
    """The attributes a caption names, from any of :data:`TEMPLATES` or a plain prompt.

    Object colors and background colors are disjoint word sets, so a ``white``/``black``/``gray``
    word is always the background. Prompts may also say ``grey``, ``big``/``little``/``tiny``,
    ``upper``/``lower``, ``centre``/``middle`` and plural shapes. Absent attributes are ``None``.
    """
    text = " ".join(caption.lower().replace("-", " ").split())
    position = next((name for name, pattern in _POSITION_PATTERNS if pattern.search(text)), None)
    return CaptionAttributes(
        color=_first_word(text, {c: c for c in COLORS}),
        shape=_first_word(text, {s: s for s in SHAPES} | {s + "s": s for s in SHAPES}),
        size=_first_word(text, _SIZE_WORDS),
        position=position,
        background=_first_word(text, _BACKGROUND_WORDS),
    )


def with_attribute(spec: ShapeSpec, attribute: str, value: str) -> ShapeSpec:
    """``spec`` with one attribute changed and every jitter kept: a moved object keeps its offset
    from the cell centre, a resized one its size factor."""
    if attribute == "position":
        (old_x, old_y), (new_x, new_y) = POSITIONS[spec.position], POSITIONS[value]
        return dataclasses.replace(
            spec,
            position=value,
            center_x=spec.center_x - old_x + new_x,
            center_y=spec.center_y - old_y + new_y,
        )
    if attribute == "size":
        factor = spec.side_fraction / SIZES[spec.size]
        return dataclasses.replace(spec, size=value, side_fraction=SIZES[value] * factor)
    if attribute == "color":
        return dataclasses.replace(spec, color=value)
    if attribute == "shape":
        return dataclasses.replace(spec, shape=value)
    if attribute == "background":
        return dataclasses.replace(spec, background=value)
    raise ValueError(f"unknown attribute {attribute!r}")


def swap_twin(
    spec: ShapeSpec, attribute: str, rng: np.random.Generator, size: int
) -> tuple[Example, Example]:
    """``spec`` and its twin with ``attribute`` changed (every jitter kept), rendered at ``size``
    and captioned in full with one template: a pair that only ``attribute`` tells apart.

    In a contrastive batch the twin is a hard negative for exactly that attribute; random
    captions almost always differ in several attributes, so a CLIP can score well while ignoring
    one (``models.evaluation.clip_probe``).
    """
    values = [v for v in _ATTRIBUTE_VALUES[attribute] if v != getattr(spec, attribute)]
    twin = with_attribute(spec, attribute, values[int(rng.integers(len(values)))])
    template = TEMPLATES[int(rng.choice(len(TEMPLATES), p=TEMPLATE_WEIGHTS))]
    pair = []
    for member in (spec, twin):
        named = {a: getattr(member, a) for a in ("color", "shape", "size", "position", "background")}
        pair.append(
            Example(render(member, size), compose_caption(template, CaptionAttributes(**named)), member)
        )
    return pair[0], pair[1]


# -- the world -------------------------------------------------------------------------------------
def shape_probabilities(weights: dict[str, float]) -> np.ndarray:
    """[len(SHAPES)] draw probabilities from relative weights by shape name (absent shapes: 0)."""
    unknown = set(weights) - set(SHAPES)
    if unknown:
        raise ValueError(f"unknown shapes {sorted(unknown)}; expected some of {SHAPES}")
    values = np.array([float(weights.get(shape, 0.0)) for shape in SHAPES])
    if (values < 0).any() or not np.isfinite(values).all() or values.sum() <= 0:
        raise ValueError(f"shape weights must be finite, non-negative and not all zero: {weights}")
    return values / values.sum()


class ShapesWorld:
    """A deterministic, endless, random-access stream of captioned pictures, and a held-out set.

    :param seed: the world seed; training streams and the held-out set both derive from it.
    :param exclude_heldout: this many held-out captions never appear in training examples.
    :param shape_weights: relative frequencies of the shapes in the training streams (default:
        uniform), for a recipe that shows a model more of the shapes it draws worst. The held-out
        set is always uniform.
    """

    def __init__(
        self,
        seed: int = 0,
        exclude_heldout: int = HELDOUT_EXCLUDED,
        shape_weights: dict[str, float] | None = None,
    ):
        self.seed = int(seed)
        self.exclude_heldout = int(exclude_heldout)
        self.shape_weights = dict(shape_weights) if shape_weights else None
        self._shape_probs = shape_probabilities(shape_weights) if shape_weights else None
        self._excluded: frozenset[str] | None = None

    def __repr__(self) -> str:
        weights = f", shape_weights={self.shape_weights}" if self.shape_weights else ""
        return f"ShapesWorld(seed={self.seed}, exclude_heldout={self.exclude_heldout}{weights})"

    def _training_shape(self, *key: int) -> str | None:
        """The shape of a training example when the world is weighted, else ``None`` (drawn by
        :func:`sample_spec`). A generator of its own makes the pick, so a weighted stream differs
        from the plain one in its shapes only."""
        if self._shape_probs is None:
            return None
        pick = np.random.default_rng([self.seed, _TRAIN_STREAM, *key, _SHAPE_PICK])
        return SHAPES[int(pick.choice(len(SHAPES), p=self._shape_probs))]

    # Training ------------------------------------------------------------------------------------
    def spec_and_caption(self, index: int, stream: int = 0) -> tuple[ShapeSpec, str]:
        """Training example ``index`` of ``stream`` before rendering; depends on nothing else."""
        rng = np.random.default_rng([self.seed, _TRAIN_STREAM, stream, index])
        spec = sample_spec(rng, shape=self._training_shape(stream, index))
        caption, _ = caption_for(spec, rng)
        redraw = 0
        while caption in self._heldout_captions():  # keep the evaluation prompts out of training
            redraw += 1
            rng = np.random.default_rng([self.seed, _TRAIN_STREAM, stream, index, _REDRAW, redraw])
            spec = sample_spec(rng, shape=self._training_shape(stream, index, _REDRAW, redraw))
            caption, _ = caption_for(spec, rng)
        return spec, caption

    def example(self, index: int, size: int, stream: int = 0) -> Example:
        spec, caption = self.spec_and_caption(index, stream)
        return Example(render(spec, size), caption, spec)

    def examples(self, size: int, stream: int = 0, start: int = 0) -> Iterator[Example]:
        """Training examples ``start, start + 1, ...`` of ``stream``, without end."""
        index = start
        while True:
            yield self.example(index, size, stream)
            index += 1

    def batch(self, n: int, size: int, stream: int = 0, start: int = 0) -> list[Example]:
        """Training examples ``start`` to ``start + n - 1`` of ``stream``."""
        return [self.example(i, size, stream) for i in range(start, start + n)]

    # Evaluation ----------------------------------------------------------------------------------
    def heldout_specs(self, n: int = 200) -> list[tuple[ShapeSpec, str]]:
        """The first ``n`` held-out specs and captions; ``heldout_specs(k)`` is a prefix of any longer."""
        out = []
        for index in range(n):
            rng = np.random.default_rng([self.seed, _HELDOUT_STREAM, index])
            spec = sample_spec(rng)
            out.append((spec, caption_for(spec, rng, full=True)[0]))
        return out

    def heldout(self, n: int = 200, size: int = 256) -> list[Example]:
        """The fixed evaluation set: captions name color, shape, size, position and background."""
        return [Example(render(spec, size), caption, spec) for spec, caption in self.heldout_specs(n)]

    def is_heldout_caption(self, caption: str) -> bool:
        """Whether ``caption`` is one of the held-out captions kept out of training."""
        return caption in self._heldout_captions()

    def _heldout_captions(self) -> frozenset[str]:
        if self._excluded is None:
            self._excluded = frozenset(c for _, c in self.heldout_specs(self.exclude_heldout))
        return self._excluded
