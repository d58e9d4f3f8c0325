"""``unclip generate`` end to end on the CPU, through the real console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # each test starts a Python that imports torch and builds the model

FAST_STEPS = ["--steps-prior", "2", "--steps-decoder", "2", "--steps-sr256", "1", "--steps-sr1024", "1"]


def unclip(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "cli.main", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.parametrize("size", [256, 1024])
def test_generate_writes_pngs(tmp_path: Path, size: int) -> None:
    result = unclip(
        "generate",
        "a small red circle",
        "--n",
        "2",
        "--size",
        str(size),
        "--seed",
        "0",
        "--out",
        str(tmp_path),
        "--random-weights",
        "tiny",
        *FAST_STEPS,
    )
    assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in tmp_path.glob("*.png"))
    assert files == ["0000_0.png", "0000_1.png"]
    with Image.open(tmp_path / "0000_0.png") as image:
        assert image.size == (size, size) and image.mode == "RGB"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["images"] == 2 and "decoder" in summary["seconds"]
    assert "s/image" in result.stderr  # per-stage timings printed


def test_prompts_file_in_batches(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue star\na green square\n")
    out = tmp_path / "out"
    result = unclip(
        "generate",
        "--prompts-file",
        str(prompts),
        "--size",
        "64",
        "--batch-size",
        "2",
        "--out",
        str(out),
        "--random-weights",
        "tiny",
        "--autocast-stages",
        "decoder,sr256",
        *FAST_STEPS,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.png")) == ["0000_0.png", "0001_0.png", "0002_0.png"]


def test_missing_prompt_is_a_clear_error(tmp_path: Path) -> None:
    result = unclip("generate", "--random-weights", "tiny", "--out", str(tmp_path))
    assert result.returncode != 0 and "PROMPT" in result.stderr


def test_unknown_autocast_stage_is_a_clear_error(tmp_path: Path) -> None:
    result = unclip("generate", "a red circle", "--random-weights", "tiny", "--autocast-stages", "prior")
    assert result.returncode == 2 and "--autocast-stages" in result.stderr and "decoder" in result.stderr


def test_missing_weights_dir_is_a_clear_error(tmp_path: Path) -> None:
    result = unclip("generate", "a red circle", "--weights", str(tmp_path / "nope"), "--out", str(tmp_path))
    assert result.returncode != 0 and "manifest.json" in result.stderr
