"""The shapes world: attributes that can be told apart, determinism, renders that match their
specs, captions that parse back, a fixed held-out set kept out of training, and the folder data
source."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.data.shapes import (
    BACKGROUNDS,
    COLORS,
    OMIT_PROB,
    POSITION_JITTER,
    POSITIONS,
    SHAPES,
    SIZE_JITTER,
    SIZES,
    TEMPLATES,
    CaptionAttributes,
    ShapesWorld,
    caption_for,
    compose_caption,
    coverage,
    parse_caption,
    render,
    sample_spec,
    swap_twin,
)
from models.data.source import DataSource, FolderSource, ShapesSource, torch_batch

ATTRIBUTES = ("color", "shape", "size", "position", "background")


def _attributes(spec: object) -> dict[str, str]:
    return {a: getattr(spec, a) for a in ATTRIBUTES}


# -- constants and specs ---------------------------------------------------------------------------
def test_world_attributes_can_be_told_apart() -> None:
    """What captions and the analyser rely on: every color differs from the others and from every
    background, the two sizes never meet under their jitter, and the nine positions are the cells
    of a 3x3 grid whose names say where they are, jitter staying inside the cell."""
    assert len(set(COLORS.values())) == len(COLORS) and not set(COLORS.values()) & set(BACKGROUNDS.values())
    assert len(set(BACKGROUNDS.values())) == len(BACKGROUNDS) and len(set(SHAPES)) == len(SHAPES)
    assert SIZES["small"] * (1 + SIZE_JITTER) < SIZES["large"] * (1 - SIZE_JITTER)
    thirds = (1 / 6, 1 / 2, 5 / 6)
    assert sorted(POSITIONS.values()) == sorted((x, y) for x in thirds for y in thirds)
    for name, (x, y) in POSITIONS.items():
        assert ("left" in name, "right" in name, "top" in name, "bottom" in name) == (
            x < 0.5,
            x > 0.5,
            y < 0.5,
            y > 0.5,
        ), name
    assert POSITION_JITTER < 1 / 6


def test_sample_spec_ranges_and_fixed_attributes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        spec = sample_spec(rng)
        base, (cx, cy) = SIZES[spec.size], POSITIONS[spec.position]
        assert base * (1 - SIZE_JITTER) <= spec.side_fraction <= base * (1 + SIZE_JITTER)
        assert abs(spec.center_x - cx) <= POSITION_JITTER and abs(spec.center_y - cy) <= POSITION_JITTER
    free = sample_spec(np.random.default_rng(9))
    fixed = sample_spec(np.random.default_rng(9), color="blue", position="left")
    assert fixed.color == "blue" and fixed.position == "left"
    # Fixing attributes does not change the draws of the others.
    assert (fixed.shape, fixed.size, fixed.background, fixed.side_fraction) == (
        free.shape,
        free.size,
        free.background,
        free.side_fraction,
    )
    with pytest.raises(ValueError, match="unknown value"):
        sample_spec(rng, shape="hexagon")


# -- determinism -----------------------------------------------------------------------------------
def test_same_seed_same_bytes_different_seed_differs() -> None:
    a = ShapesWorld(3).batch(12, 64)
    b = ShapesWorld(3).batch(12, 64)
    assert all(
        x.image.tobytes() == y.image.tobytes() and x.caption == y.caption for x, y in zip(a, b, strict=True)
    )
    c = ShapesWorld(4).batch(12, 64)
    assert [x.caption for x in a] != [x.caption for x in c]
    assert all(x.image.tobytes() != y.image.tobytes() for x, y in zip(a, c, strict=True))
    other_stream = ShapesWorld(3).batch(12, 64, stream=1)
    assert all(x.image.tobytes() != y.image.tobytes() for x, y in zip(a, other_stream, strict=True))


def test_stream_is_random_access() -> None:
    world = ShapesWorld(1)
    streamed = list(itertools.islice(world.examples(32, stream=2), 10))
    assert world.example(7, 32, stream=2).image.tobytes() == streamed[7].image.tobytes()
    assert [e.caption for e in world.batch(4, 32, stream=2, start=5)] == [e.caption for e in streamed[5:9]]


# -- renders match their specs ---------------------------------------------------------------------
def _far_corner(spec: object) -> tuple[int, int]:
    """(row, col) of the canvas corner farthest from the object, at 256 px."""
    return (255 if spec.center_y < 0.5 else 0), (255 if spec.center_x < 0.5 else 0)


def test_render_has_the_spec_attributes() -> None:
    rng = np.random.default_rng(1)
    for _ in range(120):
        spec = sample_spec(rng)
        image = render(spec, 256)
        assert image.shape == (256, 256, 3) and image.dtype == np.uint8
        center = image[int(spec.center_y * 256), int(spec.center_x * 256)]
        assert tuple(center) == COLORS[spec.color], spec
        assert tuple(image[_far_corner(spec)]) == BACKGROUNDS[spec.background]
        # The box of the covered pixels: side within the size's +-10% (plus a pixel of
        # anti-aliasing), centre within the jitter of the cell centre; objects the canvas clips skipped.
        ys, xs = np.nonzero(coverage(spec, 1024) > 0.5)
        if xs.min() == 0 or ys.min() == 0 or xs.max() == 1023 or ys.max() == 1023:
            continue
        side = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) / 1024
        base = SIZES[spec.size]
        assert base * (1 - SIZE_JITTER) - 2 / 1024 <= side <= base * (1 + SIZE_JITTER) + 2 / 1024, spec
        box_x, box_y = (xs.min() + xs.max() + 1) / 2048, (ys.min() + ys.max() + 1) / 2048
        cx, cy = POSITIONS[spec.position]
        assert abs(box_x - cx) <= POSITION_JITTER + 2 / 1024 and abs(box_y - cy) <= POSITION_JITTER + 2 / 1024


def test_shape_geometry() -> None:
    """Fill ratio of the box: square 1, circle pi/4, triangle 1/2, star ~0.38; star 0.951 as tall as wide."""
    expected = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5, "star": 0.384}
    for shape, fill in expected.items():
        spec = sample_spec(np.random.default_rng(0), shape=shape, size="large", position="center")
        alpha = coverage(spec, 1024)
        ratio = 0.951 if shape == "star" else 1.0  # height / width
        ys, xs = np.nonzero(alpha > 0.5)
        height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert height / width == pytest.approx(ratio, abs=0.01), shape
        assert width / 1024 == pytest.approx(spec.side_fraction, abs=2 / 1024), shape
        assert alpha.sum() / (spec.side_fraction**2 * ratio * 1024**2) == pytest.approx(fill, abs=0.01), shape


def test_render_at_size_matches_resized_1024() -> None:
    rng = np.random.default_rng(2)
    for _ in range(4):
        spec = sample_spec(rng)
        big = Image.fromarray(render(spec, 1024))
        for size in (64, 256):
            direct = render(spec, size).astype(np.int16)
            resized = np.asarray(big.resize((size, size), Image.Resampling.BOX)).astype(np.int16)
            assert np.abs(direct - resized).mean() < 0.5, (spec, size)
            assert np.abs(direct - resized).max() <= 64, (spec, size)  # a quarter of the contrast, at edges


# -- captions --------------------------------------------------------------------------------------
def test_parse_caption_round_trips_every_template_and_omission() -> None:
    rng = np.random.default_rng(3)
    for template in TEMPLATES:
        for keep in itertools.product((True, False), repeat=3):
            for _ in range(12):
                spec = sample_spec(rng)
                asked = CaptionAttributes(
                    color=spec.color,
                    shape=spec.shape,
                    size=spec.size if keep[0] else None,
                    position=spec.position if keep[1] else None,
                    background=spec.background if keep[2] else None,
                )
                caption = compose_caption(template, asked)
                assert parse_caption(caption) == asked, (template, caption)


def test_caption_examples_and_free_text() -> None:
    canonical = CaptionAttributes("red", "circle", "small", "center", "white")
    assert compose_caption("canonical", canonical) == "a small red circle in the center on a white background"
    assert compose_caption("terse", canonical) == "small red circle, center, white background"
    orange = CaptionAttributes("orange", "star", None, "top left", None)
    assert compose_caption("canonical", orange) == "an orange star in the top left"
    assert compose_caption("corner", orange) == "an orange star in the top left corner"
    assert parse_caption("A BIG grey-backed Blue Triangle, upper-right") == CaptionAttributes(
        "blue", "triangle", "large", "top right", "gray"
    )
    assert parse_caption("something else entirely") == CaptionAttributes()


def test_omission_and_template_rates() -> None:
    rng = np.random.default_rng(4)
    omitted: Counter[str] = Counter()
    n = 3000
    for _ in range(n):
        caption, asked = caption_for(sample_spec(rng), rng)
        assert asked.color and asked.shape and parse_caption(caption) == asked
        omitted.update(a for a in ("size", "position", "background") if getattr(asked, a) is None)
    for attribute in ("size", "position", "background"):
        assert omitted[attribute] / n == pytest.approx(OMIT_PROB, abs=0.025), attribute
    full = [caption_for(sample_spec(rng), rng, full=True)[1] for _ in range(200)]
    assert all(None not in a.as_dict().values() for a in full)


# -- held-out set ----------------------------------------------------------------------------------
def test_heldout_is_fixed_complete_and_kept_out_of_training() -> None:
    world = ShapesWorld(0)
    heldout = world.heldout(200, 64)
    again = ShapesWorld(0).heldout(20, 64)  # a prefix of the longer set
    assert all(
        a.image.tobytes() == b.image.tobytes() and a.caption == b.caption
        for a, b in zip(heldout[:20], again, strict=True)
    )
    for example in heldout:
        assert parse_caption(example.caption) == CaptionAttributes(**_attributes(example.spec))
    for attribute, values in [
        ("color", COLORS),
        ("shape", SHAPES),
        ("size", SIZES),
        ("position", POSITIONS),
        ("background", BACKGROUNDS),
    ]:
        assert {getattr(e.spec, attribute) for e in heldout} == set(values), attribute
    assert [e.caption for e in ShapesWorld(1).heldout(20, 64)] != [e.caption for e in heldout[:20]]
    # Disjoint from the training stream: no held-out caption, and no identical picture.
    captions = {e.caption for e in heldout}
    specs = {e.spec for e in heldout}
    for stream in (0, 1):
        training = [world.spec_and_caption(i, stream) for i in range(3000)]
        assert not captions & {c for _, c in training}
        assert not specs & {s for s, _ in training}
    # Without exclusion some training captions would repeat held-out ones: the exclusion does work.
    open_world = ShapesWorld(0, exclude_heldout=0)
    assert captions & {open_world.spec_and_caption(i)[1] for i in range(3000)}


# -- data sources ----------------------------------------------------------------------------------
def test_shapes_source_follows_the_protocol() -> None:
    source = ShapesSource()
    assert isinstance(source, DataSource)
    first = list(itertools.islice(source.examples(32, 11), 5))
    again = list(itertools.islice(source.examples(32, 11), 5))
    assert [e.caption for e in first] == [e.caption for e in again]
    assert [e.caption for e in first] != [e.caption for e in itertools.islice(source.examples(32, 12), 5)]
    images, captions = torch_batch(first)
    assert images.shape == (5, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1 and captions == [e.caption for e in first]
    white = torch_batch([type(first[0])(np.full((4, 4, 3), 255, np.uint8), "x")])[0]
    assert torch.all(white == 1.0)
    with pytest.raises(ValueError, match="different image shapes"):
        torch_batch([first[0], next(source.examples(16, 0))])


def _write_pair(root: Path, name: str, image: np.ndarray, caption: str | None, suffix: str = ".png") -> None:
    Image.fromarray(image).save(root / f"{name}{suffix}")
    if caption is not None:
        (root / f"{name}.txt").write_text(caption + "\n", encoding="utf-8")


def test_folder_source(tmp_path: Path) -> None:
    wide = np.zeros((60, 180, 3), np.uint8)
    wide[:, :] = (255, 0, 0)
    wide[:, 60:120] = (0, 255, 0)  # the centre square is green, the sides red
    _write_pair(tmp_path, "wide", wide, "a green square")
    _write_pair(tmp_path, "tall", np.full((90, 30, 3), 7, np.uint8), "  dark\n tall  ", suffix=".jpg")
    _write_pair(tmp_path, "plain", np.full((16, 16, 3), 200, np.uint8), "plain")
    source = FolderSource(tmp_path)
    assert len(source) == 3 and isinstance(source, DataSource)
    stream = list(itertools.islice(source.examples(24, seed=5), 9))
    assert all(e.image.shape == (24, 24, 3) and e.spec is None for e in stream)
    for epoch in range(3):  # every epoch shows each pair once
        assert sorted(e.caption for e in stream[3 * epoch : 3 * epoch + 3]) == [
            "a green square",
            "dark tall",
            "plain",
        ]
    again = list(itertools.islice(source.examples(24, seed=5), 9))
    assert [e.caption for e in again] == [e.caption for e in stream]
    orders = {tuple(e.caption for e in itertools.islice(source.examples(8, seed=s), 3)) for s in range(12)}
    assert len(orders) > 1  # the shuffle depends on the seed
    green = next(e for e in stream if e.caption == "a green square").image
    assert np.all(np.abs(green[2:-2].astype(int) - (0, 255, 0)).max(-1) < 10)  # center-cropped


def test_folder_source_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        FolderSource(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no images"):
        FolderSource(tmp_path)
    _write_pair(tmp_path, "lonely", np.zeros((8, 8, 3), np.uint8), None)
    with pytest.raises(ValueError, match=r"without a caption file.*lonely\.png"):
        FolderSource(tmp_path)
    (tmp_path / "lonely.txt").write_text("   \n")
    with pytest.raises(ValueError, match="empty"):
        FolderSource(tmp_path)


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_swap_twins_differ_in_one_attribute_and_say_so(attribute: str) -> None:
    from models.evaluation.analysis import analyze

    rng = np.random.default_rng(3)
    for _ in range(12):
        spec = sample_spec(rng)
        first, twin = swap_twin(spec, attribute, rng, 64)
        assert first.spec == spec and twin.spec is not None
        changed = {a for a in ATTRIBUTES if getattr(twin.spec, a) != getattr(spec, a)}
        assert changed == {attribute}
        for example in (first, twin):  # captions name all five, and the pictures show them
            assert _attributes(parse_caption(example.caption)) == _attributes(example.spec)
            assert _attributes(analyze(example.image)) == _attributes(example.spec)
        # The pair is told apart by its captions too (one template for both).
        assert first.caption != twin.caption


def test_shape_weights_change_the_shapes_only() -> None:
    """A weighted world draws its training shapes by the weights and leaves every other draw of
    an example as the plain world makes it; the held-out set stays the uniform one."""
    from models.data.shapes import shape_probabilities

    weighted = ShapesWorld(0, shape_weights={"square": 1.0, "star": 3.0})
    plain = ShapesWorld(0)
    specs = [weighted.spec_and_caption(i)[0] for i in range(1200)]
    counts = Counter(spec.shape for spec in specs)
    assert set(counts) == {"square", "star"}
    assert abs(counts["star"] / len(specs) - 0.75) < 0.04
    same = [
        (a.color, a.size, a.position, a.background, a.center_x)
        == (b.color, b.size, b.position, b.background, b.center_x)
        for a, b in zip(specs, (plain.spec_and_caption(i)[0] for i in range(1200)), strict=True)
    ]
    assert sum(same) >= 0.97 * len(same)  # all but the few redrawn around held-out captions
    assert [s for s, _ in weighted.heldout_specs(50)] == [s for s, _ in plain.heldout_specs(50)]
    assert [e.caption for e in weighted.batch(5, 16, stream=3)] == [
        e.caption for e in ShapesWorld(0, shape_weights={"square": 1.0, "star": 3.0}).batch(5, 16, stream=3)
    ]
    source = ShapesSource().with_shape_weights({"triangle": 1.0})
    assert {e.spec.shape for e in itertools.islice(source.examples(16, 4), 20)} == {"triangle"}
    np.testing.assert_allclose(shape_probabilities({"circle": 1, "star": 1}), [0.5, 0, 0, 0.5])
    for bad in ({"hexagon": 1.0}, {"star": -1.0}, {"star": 0.0}):
        with pytest.raises(ValueError, match="shape"):
            ShapesWorld(0, shape_weights=bad)
