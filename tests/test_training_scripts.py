"""The scripts that train the bundled model and carry an unfinished run between machines, run
as a user runs them (bash, the project's own CLI, real training processes at a tiny scale)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = ROOT / "scripts" / "train-default-model.sh"
CARRY_SCRIPT = ROOT / "scripts" / "carry-run.sh"
STAGES = ("clip", "prior", "decoder", "sr256", "sr1024")


def carry(
    *args: str | Path, part_bytes: int = 1000, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CARRY_PART_BYTES": str(part_bytes)}
    return subprocess.run(
        ["bash", str(CARRY_SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd
    )


def make_run(run: Path) -> dict[str, bytes]:
    files = {
        "stages/manifest.json": b'{"stages": {}}\n',
        "stages/clip.safetensors": os.urandom(2500),  # over the part size: split into three
        "stages/logs/clip.jsonl": b'{"step": 1}\n',
        "stages/checkpoints/clip.pt": os.urandom(300),  # a finished stage's: left behind
        "stages/checkpoints/decoder.pt": os.urandom(1000),  # exactly the part size: one part
        "train-clip.log": b"clip to step 1\n",
    }
    for name, data in files.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(data)
    return files


def test_carry_round_trips_a_run_with_only_the_named_checkpoints(tmp_path: Path) -> None:
    files = make_run(tmp_path / "run")
    packed = carry("pack", tmp_path / "run", tmp_path / "carry", "stages/checkpoints/decoder.pt")
    assert packed.returncode == 0, packed.stderr
    carried = sorted(
        p.relative_to(tmp_path / "carry").as_posix() for p in (tmp_path / "carry").rglob("*") if p.is_file()
    )
    assert "stages/clip.safetensors.part-002" in carried and "stages/clip.safetensors" not in carried
    assert "stages/checkpoints/decoder.pt" in carried  # not over the part size: copied as it is
    assert not any("clip.pt" in name for name in carried)
    assert all((tmp_path / "carry" / name).stat().st_size <= 1000 for name in carried)

    unpacked = carry("unpack", "carry", "back", cwd=tmp_path)  # relative paths, as in the docs
    assert unpacked.returncode == 0, unpacked.stderr
    restored = {
        p.relative_to(tmp_path / "back").as_posix(): p.read_bytes()
        for p in (tmp_path / "back").rglob("*")
        if p.is_file()
    }
    assert restored == {k: v for k, v in files.items() if k != "stages/checkpoints/clip.pt"}


def test_carry_refuses_a_damaged_part_and_a_missing_checkpoint(tmp_path: Path) -> None:
    make_run(tmp_path / "run")
    missing = carry("pack", tmp_path / "run", tmp_path / "carry", "stages/checkpoints/prior.pt")
    assert missing.returncode != 0 and "no checkpoint" in missing.stderr
    assert carry("pack", tmp_path / "run", tmp_path / "carry").returncode == 0
    part = tmp_path / "carry" / "stages" / "clip.safetensors.part-001"
    part.write_bytes(bytes(b ^ 1 for b in part.read_bytes()))
    damaged = carry("unpack", tmp_path / "carry", tmp_path / "back")
    assert damaged.returncode != 0
    assert "stages/clip.safetensors: FAILED" in damaged.stdout + damaged.stderr


@pytest.mark.slow
def test_the_training_script_trains_every_stage_to_its_steps_then_skips_them(tmp_path: Path) -> None:
    """TRAIN_SCALE shrinks every step budget to one or two steps: the whole script end to end,
    two replicas a stage, then a rerun that finds every stage finished, checkpoints or not."""
    venv_bin = Path(sys.executable).parent
    env = {
        **os.environ,
        "TRAIN_SCALE": "0.0001",
        "UNCLIP": str(venv_bin / "unclip"),
        "PYTHON": sys.executable,
    }
    out = tmp_path / "run"
    first = subprocess.run(
        ["bash", str(TRAIN_SCRIPT), str(out)], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600
    )
    assert first.returncode == 0, first.stdout + first.stderr + (out / "train-decoder.log").read_text()
    manifest = json.loads((out / "model" / "manifest.json").read_text())
    assert sorted(manifest["stages"]) == sorted(STAGES)
    notes = json.loads(manifest["notes"])
    assert {stage: notes[stage]["steps"] for stage in STAGES} == {
        "clip": 1,
        "prior": 1,
        "decoder": 4,  # 40,000 × 0.0001
        "sr256": 1,
        "sr1024": 1,
    }
    assert all(notes[stage]["recipe"]["replicas"] == 2 for stage in STAGES)

    for checkpoint in out.rglob("checkpoints/*.pt"):  # as after scripts/carry-run.sh
        checkpoint.unlink()
    again = subprocess.run(
        ["bash", str(TRAIN_SCRIPT), str(out)], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count(": done (") == 6
    assert not list(out.rglob("checkpoints/*.pt"))  # nothing trained again
