"""The attribute-swap probe: an encoder that reads the attributes exactly scores 100%, a random
CLIP scores near chance, and the bundled CLIP separates color and size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.clip import FrozenClip
from models.data.shapes import (
    BACKGROUNDS,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    parse_caption,
    sample_spec,
    with_attribute,
)
from models.evaluation.analysis import analyze
from models.evaluation.clip_probe import SWAP_VALUES, attribute_swap_retrieval
from models.pipeline import DEFAULT_WEIGHTS_DIR

VOCABULARY = [
    ("background", BACKGROUNDS),
    ("color", COLORS),
    ("shape", SHAPES),
    ("size", SIZES),
    ("position", POSITIONS),
]


def _one_hot(attributes: dict[str, str | None]) -> torch.Tensor:
    parts = [torch.tensor([float(attributes[a] == v) for v in values]) for a, values in VOCABULARY]
    return torch.nn.functional.normalize(torch.cat(parts), dim=0)


def _oracle_images(images: torch.Tensor) -> torch.Tensor:
    pixels = ((images + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return torch.stack([_one_hot(vars(analyze(p))) for p in pixels])


def _oracle_texts(captions: list[str]) -> torch.Tensor:
    return torch.stack([_one_hot(parse_caption(c).as_dict()) for c in captions])


def test_an_encoder_that_reads_the_attributes_scores_everything() -> None:
    result = attribute_swap_retrieval(_oracle_images, _oracle_texts, groups=6, seed=3)
    assert set(result.text_to_image) == {*SWAP_VALUES, "position_row", "position_column"}
    assert all(v == 1.0 for v in result.text_to_image.values()), result
    assert all(v == 1.0 for v in result.image_to_text.values()), result
    assert result.to_metrics()["held_swap_position_t2i"] == 1.0


def test_with_attribute_changes_one_attribute_and_keeps_the_jitter() -> None:
    spec = sample_spec(np.random.default_rng(0), size="small", position="top left")
    moved = with_attribute(spec, "position", "bottom right")
    assert (moved.center_x - spec.center_x, moved.center_y - spec.center_y) == pytest.approx((2 / 3, 2 / 3))
    grown = with_attribute(spec, "size", "large")
    assert grown.side_fraction / SIZES["large"] == pytest.approx(spec.side_fraction / SIZES["small"])
    assert with_attribute(spec, "shape", "star").shape == "star"
    with pytest.raises(ValueError, match="unknown attribute"):
        with_attribute(spec, "texture", "x")


@pytest.fixture(scope="module")
def clip_model(tiny_clip: torch.nn.Module) -> torch.nn.Module:
    return tiny_clip.eval()  # the tests below load the bundled weights into it


def _score(model: torch.nn.Module) -> tuple[dict[str, float], dict[str, float]]:
    clip = FrozenClip(model)
    result = attribute_swap_retrieval(clip.encode_image, lambda c: clip.encode_text(c).embedding, groups=16)
    return result.text_to_image, result.image_to_text


def test_random_clip_is_near_chance(clip_model: torch.nn.Module) -> None:
    for scores in _score(clip_model):
        for attribute, values in SWAP_VALUES.items():
            assert scores[attribute] < 1 / len(values) + 0.3, (attribute, scores)
        assert scores["position_row"] < 1 / 3 + 0.3 and scores["position_column"] < 1 / 3 + 0.3, scores


def test_bundled_clip_separates_color_and_size(clip_model: torch.nn.Module) -> None:
    from models.checkpoints import load_stage_into

    load_stage_into(clip_model, DEFAULT_WEIGHTS_DIR, "clip")
    for scores in _score(clip_model):
        assert scores["color"] >= 0.95 and scores["size"] >= 0.95, scores
        assert scores["position"] > 2 / len(POSITIONS), scores  # at least twice chance


def test_command_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    from models.evaluation.clip_probe import main

    assert main(["--groups", "4"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == [
        "| color",
        "| shape",
        "| size",
        "| position",
        "| position_row",
        "| position_column",
    ]
