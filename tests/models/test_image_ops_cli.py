"""``unclip variations | interpolate | text-diff | edit`` through the real console entry point,
on random tiny weights at 64x64 (what the files are, not what they show)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow
COMMON = ["--weights", "random:tiny", "--size", "64", "--seed", "1"]


def unclip(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "cli.main", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "source.png"
    pixels = np.full((80, 64, 3), 255, np.uint8)  # not square: centre-cropped
    pixels[20:60, 20:44] = (200, 0, 0)
    Image.fromarray(pixels).save(path)
    return path


def test_variations_write_pngs_and_a_strip(tmp_path: Path, source: Path) -> None:
    strip = tmp_path / "strip.png"
    result = unclip(
        "variations", str(source), "--n", "2", "--out", str(tmp_path), "--strip", str(strip), *COMMON
    )
    assert result.returncode == 0, result.stderr
    files = json.loads(result.stdout.strip().splitlines()[-1])["files"]
    assert [Path(f).name for f in files] == ["variations_00.png", "variations_01.png", "strip.png"]
    assert Image.open(files[0]).size == (64, 64)
    assert Image.open(strip).width > 3 * 64  # source + 2 outputs, captioned


def test_interpolate_between_a_prompt_and_an_image_writes_an_animation(tmp_path: Path, source: Path) -> None:
    result = unclip(
        "interpolate", "a red circle", str(source), "--steps", "3", "--out", str(tmp_path), *COMMON
    )
    assert result.returncode == 0, result.stderr
    animation = tmp_path / "interpolate.gif"
    gif = Image.open(animation)
    played = 0
    for k in range(gif.n_frames):  # equal neighbours are merged into one longer frame
        gif.seek(k)
        played += gif.info["duration"]
    assert gif.format == "GIF" and played == 4 * 250  # 3 frames forth, 1 back, 250 ms each
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [f"interpolate_0{k}.png" for k in range(3)]


def test_text_diff_and_edit(tmp_path: Path, source: Path) -> None:
    diff = unclip(
        "text-diff",
        str(source),
        "--from",
        "a red circle",
        "--to",
        "a red square",
        "--angles",
        "0",
        "0.5",
        "--out",
        str(tmp_path),
        *COMMON,
    )
    assert diff.returncode == 0, diff.stderr
    square = tmp_path / "square.png"
    Image.open(source).crop((0, 8, 64, 72)).save(square)
    mask = tmp_path / "mask.png"
    pixels = np.zeros((64, 64), np.uint8)
    pixels[:, 32:] = 255
    Image.fromarray(pixels).save(mask)
    edit = unclip(
        "edit", str(square), "--mask", str(mask), "--prompt", "a blue star", "--out", str(tmp_path), *COMMON
    )
    assert edit.returncode == 0, edit.stderr
    out = np.asarray(Image.open(tmp_path / "edit_00.png"))
    assert np.abs(out[:, :30].astype(int) - np.asarray(Image.open(square))[:, :30]).max() <= 1


def test_bad_arguments_are_clear_errors(tmp_path: Path, source: Path) -> None:
    same = unclip(
        "text-diff", str(source), "--from", "a cat", "--to", "a cat", "--out", str(tmp_path), *COMMON
    )
    assert same.returncode != 0 and "same CLIP embedding" in same.stderr
    no_mask = unclip("edit", str(source), "--prompt", "x", "--out", str(tmp_path), *COMMON)
    assert no_mask.returncode != 0 and "--mask" in no_mask.stderr
    size = unclip(
        "variations", str(source), "--weights", "random:tiny", "--size", "4096", "--out", str(tmp_path)
    )
    assert size.returncode != 0 and "size" in size.stderr
