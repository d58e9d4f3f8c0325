"""The evaluator: metric math against closed forms, ground-truth renders at 100%, noise near chance,
and ``evaluate()`` / ``unclip evaluate`` end to end on random tiny weights."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.configs import SamplingConfig, StageSampling
from models.data.shapes import ShapesWorld, parse_caption
from models.evaluation.grid import save_grid
from models.evaluation.metrics import (
    adherence,
    adherence_from_scores,
    clip_r_precision,
    frechet_distance,
    frechet_distance_from_stats,
)

# One or two steps and no decoder guidance: the end-to-end tests check plumbing, not quality.
FAST = SamplingConfig(
    prior=StageSampling(steps=2, guidance=2.0),
    decoder=StageSampling(steps=1, guidance=1.0),
    sr256=StageSampling(steps=1),
    sr1024=StageSampling(steps=1),
)
# Chance of guessing each attribute of the world: 6 colors, 4 shapes, 2 sizes, 9 positions.
CHANCE = {"color": 1 / 6, "shape": 1 / 4, "size": 1 / 2, "position": 1 / 9}


# -- Fréchet distance ------------------------------------------------------------------------------
@pytest.mark.parametrize(("a", "b", "dim"), [(1.0, 1.0, 4), (0.5, 2.0, 8), (3.0, 0.1, 64)])
def test_frechet_isotropic_closed_form(a: float, b: float, dim: int) -> None:
    """N(mu1, a² I) vs N(mu2, b² I): d² = ||mu1 - mu2||² + dim (a - b)²."""
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    got = frechet_distance_from_stats(mu1, a**2 * np.eye(dim), mu2, b**2 * np.eye(dim))
    assert got == pytest.approx(float(((mu1 - mu2) ** 2).sum()) + dim * (a - b) ** 2, rel=1e-10, abs=1e-10)


def test_frechet_general_covariances_match_eigenvalues_of_product() -> None:
    """Non-commuting covariances: tr((S1 S2)^½) equals the sum of sqrt(eig(S1 S2))."""
    rng = np.random.default_rng(1)
    dim = 6
    a, b = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
    s1, s2 = a @ a.T + 0.1 * np.eye(dim), b @ b.T + 0.1 * np.eye(dim)
    tr_covmean = np.sqrt(np.linalg.eigvals(s1 @ s2).real).sum()
    expected = np.trace(s1) + np.trace(s2) - 2 * tr_covmean
    assert frechet_distance_from_stats(np.zeros(dim), s1, np.zeros(dim), s2) == pytest.approx(
        expected, rel=1e-8
    )


def test_frechet_of_samples() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 16))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    shift = rng.normal(size=16)
    # A shift moves the mean only: the distance is exactly ||shift||².
    assert frechet_distance(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-8)
    # Large samples of isotropic Gaussians approach the closed form (16 * (1 - 2)² = 16).
    y = 2.0 * rng.normal(size=(20000, 16))
    assert frechet_distance(rng.normal(size=(20000, 16)), y) == pytest.approx(16.0, rel=0.05)


def test_frechet_rank_deficient_and_torch_input() -> None:
    """Fewer samples than dimensions (as with 200 prompts and a 768-wide CLIP) stays finite and >= 0."""
    import torch

    x = torch.randn(10, 32, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(x, torch.randn(12, 32)) > 0


# -- CLIP R-precision ------------------------------------------------------------------------------
def test_r_precision_identical_embeddings_is_perfect() -> None:
    emb = np.random.default_rng(3).normal(size=(50, 16))
    assert clip_r_precision(emb, emb) == 1.0
    assert clip_r_precision(emb, emb, distractors=9) == 1.0
    duplicated = np.concatenate([emb, emb[:5]])  # the same prompt twice ties, never ranks lower
    assert clip_r_precision(duplicated, duplicated) == 1.0


def test_r_precision_random_is_chance() -> None:
    rng = np.random.default_rng(4)
    n = 400
    images, texts = rng.normal(size=(n, 64)), rng.normal(size=(n, 64))
    assert clip_r_precision(images, texts) <= 5 / n  # chance is 1/n
    assert clip_r_precision(images, texts, k=n) == 1.0
    assert clip_r_precision(images, texts, distractors=9, seed=1) == pytest.approx(0.1, abs=0.05)
    with pytest.raises(ValueError):
        clip_r_precision(images, texts[:-1])


# -- adherence aggregation -------------------------------------------------------------------------
def test_adherence_counts_only_asked_attributes() -> None:
    asked = [
        {"color": "red", "shape": "circle", "size": "small", "position": "top", "background": "white"},
        {"color": "blue", "shape": "star", "size": None, "position": None, "background": None},
    ]
    scores = [
        {"color": True, "shape": True, "size": False, "position": True, "background": True},
        {"color": True, "shape": True, "size": False, "position": False, "background": False},
    ]
    report = adherence_from_scores(scores, asked)
    assert report.n == 2
    assert report.accuracy == {"color": 1.0, "shape": 1.0, "size": 0.0, "position": 1.0, "background": 1.0}
    assert report.asked == {"color": 2, "shape": 2, "size": 1, "position": 1, "background": 1}
    assert report.all_four == 0.5  # the second image asked for no size or position
    assert [row["all"] for row in report.per_image] == [False, True]


# -- the analyser on renders and on noise ----------------------------------------------------------
@pytest.fixture(scope="module")
def heldout() -> list:
    return ShapesWorld(0).heldout(36, 256)


def _asked(examples: list) -> list:
    return [parse_caption(example.caption) for example in examples]


def test_ground_truth_renders_score_100_percent(heldout: list) -> None:
    report = adherence([example.image for example in heldout], _asked(heldout))
    assert report.n == len(heldout)
    for attribute in CHANCE:
        assert report.asked[attribute] > 0, f"no held-out prompt asks for {attribute}"
        assert report.accuracy[attribute] == 1.0, attribute
    assert report.all_four == 1.0
    # The renders are read as the shape they were asked for: the confusion table is diagonal.
    asked_shapes = [attributes.shape for attributes in _asked(heldout) if attributes.shape]
    assert sum(sum(row.values()) for row in report.shape_confusion.values()) == len(asked_shapes)
    for asked, row in report.shape_confusion.items():
        assert row[asked] == asked_shapes.count(asked)


def test_shape_confusion_says_what_was_drawn_instead(heldout: list) -> None:
    """Every image replaced by one star render: each asked shape's row has all its images under
    "star", which the accuracy alone (a quarter right) would not tell."""
    star = next(example.image for example in heldout if parse_caption(example.caption).shape == "star")
    asked = _asked(heldout)
    report = adherence([star] * len(heldout), asked)
    for shape, row in report.shape_confusion.items():
        count = sum(1 for attributes in asked if attributes.shape == shape)
        assert row["star"] == count and sum(row.values()) == count


def _smooth_noise(count: int, side: int) -> list[np.ndarray]:
    """Random color blobs: bicubic upsampling of 8x8 uniform noise."""
    import torch
    import torch.nn.functional as F

    x = torch.rand(count, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    x = F.interpolate(x, size=(side, side), mode="bicubic", align_corners=False).clamp(0, 1)
    return list((x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy())


def test_noise_scores_near_chance(heldout: list) -> None:
    rng = np.random.default_rng(5)
    side = heldout[0].image.shape[0]
    pixel_noise = [rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8) for _ in heldout]
    # Real renders scored against the wrong prompts: agreement only by chance.
    mismatched = [example.image for example in heldout[1:] + heldout[:1]]
    for images in (pixel_noise, _smooth_noise(len(heldout), side), mismatched):
        report = adherence(images, _asked(heldout))
        for attribute, chance in CHANCE.items():
            assert report.accuracy[attribute] <= chance + 0.25, (attribute, report.accuracy)
        assert report.all_four <= 0.1


# -- grid ------------------------------------------------------------------------------------------
def test_save_grid(tmp_path: Path) -> None:
    images = [np.full((32, 32, 3), 40 * k, dtype=np.uint8) for k in range(5)]
    plain = Image.open(save_grid(images, None, tmp_path / "plain.png", columns=4))
    assert plain.size == (4 * 36 + 4, 2 * 36 + 4)
    captioned = Image.open(
        save_grid(images, [f"a red circle number {k}" for k in range(5)], tmp_path / "c.png")
    )
    assert captioned.size[0] == 5 * 36 + 4 and captioned.size[1] > 36 + 4
    with pytest.raises(ValueError):
        save_grid(images, ["one caption"], tmp_path / "bad.png")


# -- end to end on random tiny weights -------------------------------------------------------------
def test_evaluate_end_to_end_random_tiny(tmp_path: Path) -> None:
    from models.evaluation.evaluate import evaluate
    from models.pipeline import load_pipeline

    pipeline = load_pipeline("random:tiny")
    report = evaluate(pipeline, n=4, size=64, sampling=FAST, batch_size=4, progress=False, out_dir=tmp_path)
    assert report.n == 4 and report.size == 64
    assert report.sampling["decoder"]["steps"] == 1
    for attribute in CHANCE:
        assert 0.0 <= report.accuracy.get(attribute, 0.0) <= 1.0
    assert 0.0 <= report.all_four <= 1.0 and 0.0 <= report.r_precision <= 1.0
    assert np.isfinite(report.clip_fid) and report.clip_fid >= 0.0
    assert report.seconds_per_image > 0 and {"prior", "decoder"} <= set(report.stage_seconds)
    assert Image.open(tmp_path / "grid.png").size[0] > 4 * 64
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["n"] == 4 and "passes_bar" in data
    assert "R-precision" in (tmp_path / "report.md").read_text()
    # Shape fidelity: every held-out prompt names a shape, so all 4 images count.
    fidelity = data["shape_fidelity"]
    assert fidelity["n"] == 4 and len(fidelity["per_image"]) == 4
    assert 0.0 <= fidelity["mean_iou"] <= 1.0 and 0.0 <= fidelity["best_match"] <= 1.0
    assert sum(row["n"] for row in fidelity["per_shape"].values()) == 4
    assert Path(fidelity["grid"]).name == "shape_fidelity_worst.png" and Path(fidelity["grid"]).exists()
    assert "Shape fidelity" in (tmp_path / "report.md").read_text()


def test_fidelity_section_of_renders(heldout: list, tmp_path: Path) -> None:
    """The report's shape-fidelity section on ground-truth renders (no model): every image matches
    its asked shape best with an IoU near 1, the markdown has a row per asked shape and the grid a
    row of worst images per asked shape."""
    from models.evaluation.evaluate import FIDELITY_GRID, EvaluationReport, fidelity_section, write_outputs
    from models.evaluation.fidelity import TILE, WORST_IMAGES, shape_fidelity

    examples = heldout[:12]
    images, prompts = [example.image for example in examples], [example.caption for example in examples]
    section = fidelity_section([shape_fidelity(image) for image in images], prompts)
    assert section["n"] == 12 and section["best_match"] == 1.0 and section["mean_iou"] >= 0.99
    asked = {parse_caption(prompt).shape for prompt in prompts}
    assert set(section["per_shape"]) == set(section["worst"]) == asked
    for shape, rows in section["worst"].items():
        assert [row["iou"] for row in rows] == sorted(row["iou"] for row in rows)
        assert all(parse_caption(row["prompt"]).shape == shape and len(row["fit"]) == 3 for row in rows)
    adherence_report = adherence(images, _asked(examples))
    report = EvaluationReport(
        model_id="renders",
        n=12,
        size=256,
        sampling={},
        accuracy=adherence_report.accuracy,
        asked=adherence_report.asked,
        all_four=adherence_report.all_four,
        r_precision=1.0,
        clip_fid=0.0,
        reference_fid=0.0,
        seconds_per_image=0.0,
        stage_seconds={},
        shape_confusion=adherence_report.shape_confusion,
        shape_fidelity=section,
    )
    write_outputs(report, images, prompts, tmp_path)
    grid = Image.open(tmp_path / FIDELITY_GRID)
    assert grid.size[0] == WORST_IMAGES * (TILE + 4) + 4 and grid.size[1] > len(asked) * (TILE + 4)
    markdown = (tmp_path / "report.md").read_text()
    assert FIDELITY_GRID in markdown
    for shape in asked:
        assert any(
            line.startswith(f"| {shape} |") and "100.0% | 100.0% |" in line for line in markdown.splitlines()
        )
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["shape_fidelity"]["grid"] == str(tmp_path / FIDELITY_GRID)
    assert data["accuracy"] == report.accuracy and data["shape_confusion"] == report.shape_confusion


def test_evaluate_decodes_rendered_embeddings(tmp_path: Path) -> None:
    from models.evaluation.evaluate import evaluate
    from models.pipeline import load_pipeline

    pipeline = load_pipeline("random:tiny")
    report = evaluate(pipeline, n=2, size=64, sampling=FAST, progress=False, image_embeddings="rendered")
    assert report.image_embeddings == "rendered"
    assert set(report.stage_seconds) == {"clip", "decoder"}  # no prior
    assert "decoded from the renders' CLIP embeddings" in report.to_markdown()
    with pytest.raises(ValueError, match="image_embeddings"):
        evaluate(pipeline, n=2, size=64, sampling=FAST, progress=False, image_embeddings="truth")  # type: ignore[arg-type]


def _parser() -> argparse.ArgumentParser:
    from models.evaluation.cli import register

    parser = argparse.ArgumentParser(prog="unclip")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_sampling_overrides() -> None:
    from models.evaluation.cli import sampling_from_args

    args = _parser().parse_args(
        [
            "evaluate",
            "--steps-decoder",
            "7",
            "--guidance-decoder",
            "1.5",
            "--sampler",
            "ddpm",
            "--sampler-prior",
            "ddim",
        ]
    )
    assert args.n == 200 and args.size == 256 and args.batch_size == 8
    assert args.image_embeddings == "prior"
    assert _parser().parse_args(["evaluate", "--image-embeddings", "rendered"]).image_embeddings == "rendered"
    sampling = sampling_from_args(args, SamplingConfig())
    assert sampling.decoder == StageSampling(steps=7, guidance=1.5, sampler="ddpm")
    assert sampling.prior.sampler == "ddim" and sampling.prior.steps == SamplingConfig().prior.steps
    assert sampling.sr256.sampler == "ddpm"


def test_cli_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(
        [
            *("evaluate", "--weights", "random:tiny", "--n", "2", "--size", "64", "--quiet"),
            *(
                "--out",
                str(tmp_path),
                "--steps-prior",
                "1",
                "--steps-decoder",
                "1",
                "--guidance-decoder",
                "1",
                "--autocast-stages",
                "decoder",
            ),
        ]
    )
    assert args.func(args) == 0
    assert {"grid.png", "report.json", "report.md"} <= {p.name for p in tmp_path.iterdir()}
    assert "all four" in capsys.readouterr().out
    # The report says what each network computed in: the decoder in bf16 only where the CPU has it,
    # the upsamplers (not named) in float32.
    from models.execution import bf16_supported

    precision = json.loads((tmp_path / "report.json").read_text())["meta"]["precision"]
    decoder = "bfloat16" if bf16_supported(torch.device("cpu")) else "float32"
    assert precision == {"prior": "float32", "decoder": decoder, "sr256": "float32", "sr1024": "float32"}
    assert f"| {decoder} |" in (tmp_path / "report.md").read_text()


def test_cli_autocast_stages() -> None:
    """``--autocast-stages`` picks which UNets autocast to bf16; unset, the fast path's default."""
    from models.execution import ExecutionConfig
    from models.execution_args import execution_from_args

    assert execution_from_args(_parser().parse_args(["evaluate"])) == ExecutionConfig()
    chosen = execution_from_args(_parser().parse_args(["evaluate", "--autocast-stages", "decoder, sr256"]))
    assert chosen.autocast_stages == ("decoder", "sr256")
    assert chosen == ExecutionConfig(autocast_stages=("decoder", "sr256"))
    assert (
        execution_from_args(_parser().parse_args(["evaluate", "--autocast-stages", "none"])).autocast_stages
        == ()
    )
    for bad in ("prior", "decoder,sr512", ","):
        with pytest.raises(SystemExit):
            _parser().parse_args(["evaluate", "--autocast-stages", bad])
