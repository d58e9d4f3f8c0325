"""The model-free analyser: exactly 100% on ground-truth renders, near chance on noise and random
blobs, robust to mild blur and color drift, and a connected-component labelling checked against
a plain flood fill."""

from __future__ import annotations

from collections import Counter, deque

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from models.data.shapes import (
    BACKGROUNDS,
    POSITIONS,
    CaptionAttributes,
    ShapesWorld,
    parse_caption,
    render,
    sample_spec,
)
from models.evaluation.analysis import ImageAnalysis, analyze, largest_component, score

BAR = ("color", "shape", "size", "position")
CHANCE = {"color": 1 / 6, "shape": 1 / 4, "size": 1 / 2, "position": 1 / 9, "background": 1 / 3}


def _truth(spec: object) -> CaptionAttributes:
    return CaptionAttributes(spec.color, spec.shape, spec.size, spec.position, spec.background)


def _accuracy(images: list[np.ndarray], asked: list[CaptionAttributes]) -> dict[str, float]:
    hits: Counter[str] = Counter()
    for image, attributes in zip(images, asked, strict=True):
        hits.update(k for k, v in score(analyze(image), attributes).items() if v)
    return {k: hits[k] / len(images) for k in (*CHANCE, "all")}


# -- connected components --------------------------------------------------------------------------
def _flood_fill_largest(mask: np.ndarray) -> np.ndarray:
    """Reference: breadth-first flood fill, 8-connected."""
    seen = np.zeros_like(mask, bool)
    best: list[tuple[int, int]] = []
    h, w = mask.shape
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue, component = deque([start]), []
        while queue:
            y, x = queue.popleft()
            component.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        if len(component) > len(best):
            best = component
    out = np.zeros_like(mask, bool)
    for y, x in best:
        out[y, x] = True
    return out


@pytest.mark.parametrize("density", [0.2, 0.45, 0.6])
def test_largest_component_matches_flood_fill(density: float) -> None:
    rng = np.random.default_rng(int(density * 100))
    for _ in range(20):
        mask = rng.random((int(rng.integers(1, 30)), int(rng.integers(1, 30)))) < density
        got, want = largest_component(mask), _flood_fill_largest(mask)
        assert got.sum() == want.sum()
        if np.count_nonzero(want) and got.sum() * 2 > mask.sum():  # the largest is unique
            assert np.array_equal(got, want)


def test_largest_component_cases() -> None:
    diagonal = np.eye(6, dtype=bool)
    assert largest_component(diagonal).sum() == 6  # corners touch: 8-connected
    assert not largest_component(np.zeros((5, 5), bool)).any()
    mask = np.zeros((8, 8), bool)
    mask[1:3, 1:3] = True  # 4 pixels
    mask[5:8, 4:8] = True  # 12 pixels
    assert np.array_equal(largest_component(mask), np.pad(np.ones((3, 4), bool), ((5, 0), (4, 0))))


# -- ground truth ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "n"), [(64, 400), (256, 300)])
def test_ground_truth_renders_score_exactly_100_percent(size: int, n: int) -> None:
    rng = np.random.default_rng(size)
    specs = [sample_spec(rng) for _ in range(n)]
    wrong = []
    for spec in specs:
        analysis = analyze(render(spec, size))
        if not (analysis.found and score(analysis, _truth(spec))["all"]):
            wrong.append((spec, analysis))
    assert not wrong, f"{len(wrong)} of {n} wrong at {size}px, e.g. {wrong[:3]}"


def test_every_value_at_every_cell_and_large_inputs() -> None:
    """Each shape x size at each of the nine cells, on each background, at 32, 64 and 1024 px."""
    rng = np.random.default_rng(11)
    for position in POSITIONS:
        for shape in ("circle", "square", "triangle", "star"):
            for size_name in ("small", "large"):
                spec = sample_spec(rng, position=position, shape=shape, size=size_name)
                assert score(analyze(render(spec, 64)), _truth(spec))["all"], spec
    for _ in range(6):
        spec = sample_spec(rng)
        assert score(analyze(render(spec, 1024)), _truth(spec))["all"], spec


def test_heldout_captions_score_100_percent() -> None:
    heldout = ShapesWorld(0).heldout(200, 64)
    accuracy = _accuracy([e.image for e in heldout], [parse_caption(e.caption) for e in heldout])
    assert accuracy["all"] == 1.0 and all(accuracy[a] == 1.0 for a in BAR)


# -- robustness ------------------------------------------------------------------------------------
def _degrade(
    image: np.ndarray, rng: np.random.Generator, blur: float, drift: float, noise: float
) -> np.ndarray:
    """Gaussian blur (pixels), a per-image color shift (uniform, per channel) and pixel noise."""
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(blur)), np.float32)
    shifted = blurred + rng.uniform(-drift, drift, 3) + rng.normal(0.0, noise, image.shape)
    return np.clip(np.rint(shifted), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("size", "blur"), [(64, 0.7), (256, 2.0)])
def test_robust_to_mild_blur_color_drift_and_noise(size: int, blur: float) -> None:
    rng = np.random.default_rng(21)
    specs = [sample_spec(rng) for _ in range(120)]
    images = [_degrade(render(spec, size), rng, blur, drift=15.0, noise=6.0) for spec in specs]
    accuracy = _accuracy(images, [_truth(spec) for spec in specs])
    assert accuracy["color"] >= 0.98 and accuracy["position"] >= 0.98 and accuracy["background"] == 1.0
    assert accuracy["size"] >= 0.97 and accuracy["shape"] >= 0.97 and accuracy["all"] >= 0.95, accuracy


# -- chance ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def asked() -> list[CaptionAttributes]:
    return [parse_caption(e.caption) for e in ShapesWorld(0).heldout(200, 16)]


def test_uniform_noise_is_not_an_object(asked: list[CaptionAttributes]) -> None:
    rng = np.random.default_rng(31)
    images = [rng.integers(0, 256, size=(s, s, 3), dtype=np.uint8) for s in [64] * 170 + [256] * 30]
    accuracy = _accuracy(images, asked)
    assert accuracy["all"] < 0.05
    for attribute in BAR:
        assert accuracy[attribute] <= CHANCE[attribute] + 0.1, (attribute, accuracy)
    assert sum(analyze(image).found for image in images[:50]) <= 5


def _random_blob(rng: np.random.Generator, side: int) -> np.ndarray:
    """A random ellipse or polygon in a random RGB color, on one of the world's backgrounds."""
    background = list(BACKGROUNDS.values())[int(rng.integers(3))]
    image = Image.new("RGB", (side, side), background)
    draw = ImageDraw.Draw(image)
    fill = tuple(int(v) for v in rng.integers(0, 256, 3))
    cx, cy, radius = rng.uniform(0.1, 0.9) * side, rng.uniform(0.1, 0.9) * side, rng.uniform(0.04, 0.3) * side
    if rng.random() < 0.5:
        rx, ry = radius * rng.uniform(0.5, 1.5, 2)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)
    else:
        angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 9))))
        radii = radius * rng.uniform(0.3, 1.2, len(angles))
        draw.polygon(
            [(cx + r * np.cos(a), cy + r * np.sin(a)) for r, a in zip(radii, angles, strict=True)], fill=fill
        )
    return np.asarray(image)


def test_random_blobs_score_near_chance(asked: list[CaptionAttributes]) -> None:
    rng = np.random.default_rng(41)
    images = [_random_blob(rng, 64) for _ in range(200)]
    assert sum(analyze(image).found for image in images) >= 100  # most are read as objects
    accuracy = _accuracy(images, asked)
    assert accuracy["all"] < 0.05, accuracy
    for attribute, chance in CHANCE.items():
        assert accuracy[attribute] <= chance + 0.12, (attribute, accuracy)


# -- score -----------------------------------------------------------------------------------------
def test_score_counts_only_asked_attributes() -> None:
    seen = ImageAnalysis("white", "red", "circle", "small", "top left", found=True)
    assert score(seen, CaptionAttributes("red", "circle")) == {"color": True, "shape": True, "all": True}
    partial = score(seen, {"color": "blue", "shape": "circle", "position": "top left"})
    assert partial == {"color": False, "shape": True, "position": True, "all": False}
    lost = ImageAnalysis("black", None, None, None, None, found=False)
    assert score(lost, CaptionAttributes("red", "circle", background="black")) == {
        "color": False,
        "shape": False,
        "background": True,
        "all": False,
    }
    with pytest.raises(ValueError, match="square"):
        analyze(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="square"):
        analyze(np.zeros((8, 12, 3), np.uint8))
