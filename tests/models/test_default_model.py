"""The bundled default model: complete, within the size limit, verified on load, deterministic, and
on the shapes world's quality bar.

The README's figures come from ``unclip evaluate --n 200 --size 256``; here the same evaluation
runs on the first held-out prompts (fixed seeds) so that a change to the sampling code, the
defaults or the weights that breaks adherence fails the suite.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.checkpoints import read_manifest, sha256_file
from models.configs import STAGES
from models.evaluation.evaluate import BAR, EvaluationReport, evaluate
from models.pipeline import DEFAULT_WEIGHTS_DIR, GenerationRequest, load_pipeline

MAX_FILE_BYTES = 16 * 1024 * 1024
# Held-out prompts the adherence tests generate (prompt i with seed i; per image on one CPU core
# ~0.5 s at 64x64 and ~2 s at 256x256 on an AVX-512 Xeon, ~1.2 s and ~3.7 s on an AVX2 EPYC).
ADHERENCE_PROMPTS = 32
# What the shipped weights must keep on those prompts, a few images under what they score.
# At 64x64 (the decoder's own output) they score color 100%, shape 96.9%, size 100%, position
# 100% (chance 17%, 25%, 50%, 11%); at 256x256 color 100%, shape 93.8%, size 100%, position 100%
# (on 200 prompts: 99.5%, 92.0%, 100%, 100%, README). Shape is the closest to the bar: the stars.
FLOORS_AT_64PX = {"color": 0.9, "shape": 0.85, "size": 0.9, "position": 0.9}
FLOORS_AT_256PX = {"color": 0.9, "shape": 0.85, "size": 0.9, "position": 0.9}
# Shape fidelity of the shipped weights on those prompts at 256x256 (2026-12-03, 2-core EPYC):
# mean IoU 0.854, best match 93.8% (30 of 32); per asked shape circle 0.918 (9 images), square
# 0.936 (6), triangle 0.862 (10), star 0.691 (7, best match 5 of 7). The floors leave about an
# image's worth of room (on 200 prompts: 0.843 and 90.5%, docs/model.md).
FIDELITY_FLOORS_AT_256PX = {"mean_iou": 0.82, "best_match": 0.84}
SHAPE_IOU_FLOORS_AT_256PX = {"circle": 0.89, "square": 0.90, "triangle": 0.83, "star": 0.62}
# The 256x256 evaluation runs once, in the module-scoped fixture; pytest-timeout counts a fixture's
# setup in the first test that asks for it, so both tests that use it get their own limit, sized
# for a busy two-core machine: ~2 minutes quiet on one EPYC core, three times that loaded, and
# twice that again as margin (the suite's 600 s default was hit twice on a loaded machine, when
# torch still ran two threads there: tests/conftest.py now gives it one).
TIMEOUT_AT_256PX = 1200

# One torch thread whatever OMP_NUM_THREADS says (tests/conftest.py): on a busy two-core machine
# two threads made the 256x256 evaluation about three times slower, and the figures above are
# the same with one.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def report_at_256px() -> EvaluationReport:
    report = evaluate(load_pipeline(None), n=ADHERENCE_PROMPTS, size=256, progress=False)
    print(report.to_markdown())  # pytest shows it when a test fails
    return report


def test_bundled_weights_are_complete_and_small() -> None:
    manifest = read_manifest(DEFAULT_WEIGHTS_DIR)
    assert set(manifest.stages) == set(STAGES)
    for stage, entry in manifest.stages.items():
        path = DEFAULT_WEIGHTS_DIR / entry.file
        assert path.stat().st_size <= MAX_FILE_BYTES, f"{stage} weights exceed 16 MiB"
        assert sha256_file(path) == entry.sha256
    assert json.loads((DEFAULT_WEIGHTS_DIR / "manifest.json").read_text())["format_version"] == 1


@pytest.mark.slow
def test_bundled_model_generates_deterministically() -> None:
    pipeline = load_pipeline(None)  # verifies every hash and tensor shape
    assert pipeline.model_id.startswith("weights-")
    request = GenerationRequest("a large red circle in the center on a white background", n=2, seed=3)
    first = pipeline.generate([request], 64).images[0]
    again = pipeline.generate([request], 64).images[0]
    assert first is not None and again is not None and first.shape == (2, 64, 64, 3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first[0], first[1])


@pytest.mark.slow
def test_bundled_model_keeps_its_measured_adherence_at_64px() -> None:
    """Floors a little under what the shipped weights score on these prompts at 64x64 (the
    decoder's own output): a change to the sampling code, the defaults or the weights that loses
    adherence fails the suite."""
    report = evaluate(load_pipeline(None), n=ADHERENCE_PROMPTS, size=64, progress=False)
    print(report.to_markdown())  # pytest shows it when the test fails
    for attribute, floor in FLOORS_AT_64PX.items():
        assert report.accuracy[attribute] >= floor, f"{attribute}: {report.accuracy}"


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_AT_256PX)
def test_bundled_model_keeps_its_measured_adherence_at_256px(report_at_256px: EvaluationReport) -> None:
    """The 64->256 upsampler keeps what the decoder drew (it shifted flat colors before its
    whole-image training)."""
    for attribute, floor in FLOORS_AT_256PX.items():
        assert report_at_256px.accuracy[attribute] >= floor, f"{attribute}: {report_at_256px.accuracy}"


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_AT_256PX)
def test_bundled_model_reaches_the_quality_bar(report_at_256px: EvaluationReport) -> None:
    """Color >= 95%, shape, size and position >= 90% at 256x256 with the default sampling (issue 3's
    bar, here on 32 prompts; shape has one image to spare: 30 of 32 right, 29 would still pass)."""
    for attribute, threshold in BAR.items():
        assert report_at_256px.accuracy[attribute] >= threshold, f"{attribute}: {report_at_256px.accuracy}"


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_AT_256PX)
def test_bundled_model_keeps_its_measured_shape_fidelity_at_256px(report_at_256px: EvaluationReport) -> None:
    """Shape fidelity (the outline against the asked shape drawn in the object's own box, issue
    18): floors a little under what the shipped weights score on these prompts, per shape where
    the prompts ask for it often enough to say something."""
    fidelity = report_at_256px.shape_fidelity
    assert fidelity["mean_iou"] >= FIDELITY_FLOORS_AT_256PX["mean_iou"], fidelity["per_shape"]
    assert fidelity["best_match"] >= FIDELITY_FLOORS_AT_256PX["best_match"], fidelity["per_shape"]
    for shape, floor in SHAPE_IOU_FLOORS_AT_256PX.items():
        assert fidelity["per_shape"][shape]["mean_iou"] >= floor, (shape, fidelity["per_shape"])
