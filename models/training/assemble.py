"""Combine stages trained in separate model directories into one.

Stages that do not depend on each other can train side by side, one per CPU core (the upsamplers
never see CLIP; the prior and the decoder only read the finished CLIP). Each lane writes its own
directory; :func:`assemble` copies the stages into one model directory under one config, keeping
each stage's training notes. Tensors are copied as stored (hash-checked on read).
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
from models.training.runner import export_stage

log = structlog.get_logger("models.training")


def assemble(
    out_dir: str | Path,
    config: ModelConfig,
    sources: Sequence[str | Path],
    stages: Sequence[StageName] | None = None,
) -> dict[StageName, Path]:
    """Copy every stage found in ``sources`` (later sources win) into ``out_dir`` under ``config``.

    Each stage's tensors must fit the network ``config`` builds for it, so a directory trained
    under another config is refused rather than silently mislabelled.

    :param stages: only these stages (default: all found).
    :return: stage -> the source directory it came from.
    :raises WeightsError: a source is not a model directory, a wanted stage is in none of them, or
        its tensors do not fit ``config``.
    """
    found: dict[StageName, Path] = {}
    for source in map(Path, sources):
        present = read_manifest(source).stages
        found.update((stage, source) for stage in STAGES if stage in present)
    wanted = list(stages) if stages is not None else [s for s in STAGES if s in found]
    missing = [s for s in wanted if s not in found]
    if missing:
        raise WeightsError(f"stages {missing} are in none of {[str(s) for s in sources]}")
    for stage in wanted:
        state = load_stage_state(found[stage], stage)
        _check_fits(stage, config, state, found[stage])
        export_stage(out_dir, config, stage, state, notes=_stage_notes(found[stage], stage))
        log.info("stage assembled", stage=stage, source=str(found[stage]), out=str(out_dir))
    return {stage: found[stage] for stage in wanted}


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
