"""Combine stages trained in separate model directories into one.

Stages that do not depend on each other can train side by side, one per CPU core (the upsamplers
never see CLIP; the prior and the decoder only read the finished CLIP). Each lane writes its own
directory; :func:`assemble` copies the stages into one model directory under one config, keeping
each stage's training notes. Tensors are copied as stored (hash-checked on read).

A stage still training has no exported weights yet, only its checkpoint: ``from_checkpoints``
takes such a stage's EMA weights from ``checkpoints/<stage>.pt`` instead (a snapshot of a long
run, to evaluate it on the way without stopping it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from models.checkpoints import WeightsError, load_stage_state, read_manifest
from models.configs import STAGES, ModelConfig, StageName
from models.factory import create_stage_module
from models.training.ema import EMA
from models.training.runner import export_stage
from models.training.state import checkpoint_path, load_checkpoint

log = structlog.get_logger("models.training")


def assemble(
    out_dir: str | Path,
    config: ModelConfig,
    sources: Sequence[str | Path],
    stages: Sequence[StageName] | None = None,
    from_checkpoints: Sequence[StageName] = (),
) -> dict[StageName, Path]:
    """Copy every stage found in ``sources`` (later sources win) into ``out_dir`` under ``config``.

    Each stage's tensors must fit the network ``config`` builds for it, so a directory trained
    under another config is refused rather than silently mislabelled.

    :param stages: only these stages (default: all found).
    :param from_checkpoints: these stages come from the EMA weights of the sources' training
        checkpoints (later sources win), not from their exported weights; a source needs no
        manifest for them.
    :return: stage -> the source directory (or, for ``from_checkpoints``, the checkpoint file) it
        came from.
    :raises WeightsError: a source is not a model directory, a wanted stage is in none of them, or
        its tensors do not fit ``config``.
    """
    found: dict[StageName, Path] = {}
    for source in map(Path, sources):
        if (source / "manifest.json").exists() or not from_checkpoints:
            present = read_manifest(source).stages
            found.update((stage, source) for stage in STAGES if stage in present)
    snapshots: dict[StageName, Path] = {}
    for stage in from_checkpoints:
        paths = [checkpoint_path(source, stage) for source in map(Path, sources)]
        existing = [path for path in paths if path.exists()]
        if not existing:
            raise WeightsError(f"no checkpoint of stage {stage!r} in {[str(s) for s in sources]}")
        snapshots[stage] = existing[-1]
        found.pop(stage, None)
    wanted = list(stages) if stages is not None else [s for s in STAGES if s in found or s in snapshots]
    missing = [s for s in wanted if s not in found and s not in snapshots]
    if missing:
        raise WeightsError(f"stages {missing} are in none of {[str(s) for s in sources]}")
    taken: dict[StageName, Path] = {}
    for stage in wanted:
        if stage in snapshots:
            taken[stage] = snapshots[stage]
            state, notes = _ema_snapshot(snapshots[stage], stage, config)
        else:
            taken[stage] = found[stage]
            state, notes = load_stage_state(found[stage], stage), _stage_notes(found[stage], stage)
        _check_fits(stage, config, state, taken[stage])
        export_stage(out_dir, config, stage, state, notes=notes)
        log.info("stage assembled", stage=stage, source=str(taken[stage]), out=str(out_dir))
    return taken


def _ema_snapshot(path: Path, stage: StageName, config: ModelConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """A training checkpoint's EMA weights as the stage's state dict (what the run would export if
    it ended now, by the trainer's own :meth:`EMA.averaged_state_dict`), and notes saying which
    step they are of."""
    checkpoint = load_checkpoint(path)
    if checkpoint is None or checkpoint.get("stage") != stage:
        raise WeightsError(f"{path} is not a training checkpoint of stage {stage!r}")
    _check_fits(stage, config, checkpoint["module"], path)
    module = create_stage_module(stage, config)
    module.load_state_dict(checkpoint["module"])
    ema = EMA(module)
    ema.load_state_dict(checkpoint["ema"])
    recipe = checkpoint.get("train_config", {})
    notes = {
        "snapshot_of": str(path),
        "steps": int(checkpoint["step"]),
        "examples": int(checkpoint["examples"]),
        "seconds": round(float(checkpoint["elapsed_seconds"]), 1),
        "recipe": {k: recipe[k] for k in ("batch_size", "lr", "seed", "steps", "bf16") if k in recipe},
    }
    return ema.averaged_state_dict(module), notes


def _check_fits(stage: StageName, config: ModelConfig, state: dict[str, Any], source: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in create_stage_module(stage, config).state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in state.items()}
    if expected != actual:
        differing = sorted(
            (set(expected) ^ set(actual)) | {k for k in expected if actual.get(k) != expected[k]}
        )
        raise WeightsError(
            f"stage {stage!r} in {source} does not fit config {config.name!r} "
            f"(tensors differ: {differing[:5]}{' ...' if len(differing) > 5 else ''})"
        )


def _stage_notes(source: Path, stage: StageName) -> dict[str, Any]:
    notes = read_manifest(source).notes
    try:
        parsed = json.loads(notes) if notes else {}
    except json.JSONDecodeError:
        return {}
    value = parsed.get(stage, {}) if isinstance(parsed, dict) else {}
    return value if isinstance(value, dict) else {}
