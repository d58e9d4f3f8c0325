"""Weights on disk: one safetensors file per stage and a JSON manifest.

Layout of a weights folder::

    manifest.json        {"format_version": 1, "model": <ModelConfig as dict>,
                          "stages": {stage: {"file", "sha256", "dtype", "parameters"}},
                          "created": <ISO time>, "notes": <str or null>}
    prior.safetensors    one file per saved stage
    ...

Weights are only read from a local path (nothing is downloaded here). Every file is written
the way GLIDE's ``download.py`` does it: to a temporary file in the same folder, flushed and
fsynced, then moved into place with ``os.replace``; the manifest goes last, so a crash leaves
either the old checkpoint or the new one, never half of one. Loading checks the sha256 from
the manifest, then key names and shapes, before anything is copied into a module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from models.configs import STAGES, ModelConfig, StageName, config_to_dict, model_config_from_dict

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
_DTYPE_NAMES = {torch.float16: "float16", torch.float32: "float32", torch.bfloat16: "bfloat16"}
_SHOWN = 5  # how many offending keys an error message lists


class WeightsError(ValueError):
    """A weights file or manifest that is missing, corrupted or does not fit the model."""


@dataclass(frozen=True)
class StageEntry:
    """One stage's file in the manifest. ``parameters`` counts the elements of all stored tensors."""

    file: str
    sha256: str
    dtype: str
    parameters: int


@dataclass(frozen=True)
class Manifest:
    format_version: int
    config: ModelConfig
    stages: dict[str, StageEntry]
    notes: str | None = None
    created: str | None = None


# ----------------------------------------------------------------------------- writing


def save_weights(
    directory: str | Path,
    config: ModelConfig,
    modules: Mapping[StageName, nn.Module | Mapping[str, torch.Tensor]],
    dtype: torch.dtype | None = None,
    notes: str | None = None,
) -> Path:
    """Write the given stages (a subset is fine) and then the manifest; returns the manifest path.

    :param modules: stage name -> module or state dict.
    :param dtype: cast floating tensors to this dtype (float16 / bfloat16 keep files small).
    Stages already in the folder's manifest are kept when that manifest has the same config;
    with a different config the old manifest is replaced by one listing only these stages.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if dtype is not None and dtype not in _DTYPE_NAMES:
        raise ValueError(f"weights dtype must be one of {list(_DTYPE_NAMES.values())}, got {dtype}")
    entries = _entries_to_keep(directory, config)
    for stage, module in modules.items():
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; known: {list(STAGES)}")
        entries[stage] = _save_stage(directory, stage, _state_for_saving(module, dtype))
    manifest = {
        "format_version": FORMAT_VERSION,
        "model": config_to_dict(config),
        "stages": {stage: entries[stage] for stage in STAGES if stage in entries},
        "created": datetime.now(UTC).isoformat(),
        "notes": notes,
    }
    path = directory / MANIFEST_NAME
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def _entries_to_keep(directory: Path, config: ModelConfig) -> dict[str, dict[str, Any]]:
    if not (directory / MANIFEST_NAME).exists():
        return {}
    try:
        old = read_manifest(directory)
    except WeightsError:
        return {}
    if old.config != config:
        return {}
    return {stage: vars(entry).copy() for stage, entry in old.stages.items()}


def _state_for_saving(
    module: nn.Module | Mapping[str, torch.Tensor], dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors, floats cast to ``dtype``; shared storage is cloned
    (safetensors refuses tensors that share memory, e.g. tied weights)."""
    state = module.state_dict() if isinstance(module, nn.Module) else module
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in state.items():
        t = tensor.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.contiguous()
        storage = t.untyped_storage().data_ptr()
        if storage in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def _save_stage(directory: Path, stage: str, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    path = directory / f"{stage}.safetensors"
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(state, str(tmp), metadata={"stage": stage, "format_version": "1"})
        digest = sha256_file(tmp)
    return {
        "file": path.name,
        "sha256": digest,
        "dtype": _dtype_name(state),
        "parameters": sum(t.numel() for t in state.values()),
    }


def _dtype_name(state: Mapping[str, torch.Tensor]) -> str:
    """The dtype most floating tensors are stored in (float32 when there are none)."""
    counts = Counter(t.dtype for t in state.values() if t.is_floating_point())
    if not counts:
        return "float32"
    dtype = counts.most_common(1)[0][0]
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and move it into place."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- reading


def read_manifest(directory: str | Path) -> Manifest:
    path = Path(directory) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"no weights manifest at {path}") from None
    except json.JSONDecodeError as error:
        raise WeightsError(f"weights manifest {path} is not valid JSON: {error}") from error
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise WeightsError(
            f"weights manifest {path} has format_version {version!r}; this code reads only version "
            f"{FORMAT_VERSION} (written by a different version of the service?)"
        )
    try:
        config = model_config_from_dict(data["model"])
        stages = {stage: StageEntry(**entry) for stage, entry in data["stages"].items()}
    except (KeyError, TypeError, ValueError) as error:
        raise WeightsError(f"weights manifest {path} is malformed: {error!r}") from error
    return Manifest(
        format_version=version,
        config=config,
        stages=stages,
        notes=data.get("notes"),
        created=data.get("created"),
    )


def load_stage_state(
    directory: str | Path, stage: StageName, verify_hash: bool = True
) -> dict[str, torch.Tensor]:
    """The stored tensors of one stage (CPU, in their stored dtype), hash-checked by default."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    entry = manifest.stages.get(stage)
    if entry is None:
        raise WeightsError(
            f"stage {stage!r} is not in the weights at {directory}; it has {sorted(manifest.stages)}"
        )
    path = directory / entry.file
    if not path.is_file():
        raise WeightsError(f"weights file {path} for stage {stage!r} is missing")
    if verify_hash:
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise WeightsError(
                f"weights file {path} is corrupted or was changed: sha256 expected {entry.sha256}, "
                f"actual {actual}"
            )
    try:
        return safetensors.torch.load_file(str(path))
    except Exception as error:  # safetensors raises its own error type for bad headers
        raise WeightsError(f"weights file {path} cannot be read: {error}") from error


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor], *, file_label: str) -> None:
    """Copy ``state`` into ``module`` after checking every key and shape.

    Tensors are cast to the module's dtype (e.g. float16 storage into a float32 module).
    Raises :class:`WeightsError` naming ``file_label`` before anything is copied.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) {_few(unexpected)}")
    wrong_shapes = [
        f"tensor {k!r}: expected shape {tuple(v.shape)}, found {tuple(state[k].shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if wrong_shapes:
        problems.append(f"{len(wrong_shapes)} shape mismatch(es): {'; '.join(wrong_shapes[:_SHOWN])}")
    if problems:
        raise WeightsError(f"weights {file_label} do not fit {type(module).__name__}: {' | '.join(problems)}")
    cast = {k: state[k].to(dtype=v.dtype) for k, v in expected.items()}
    module.load_state_dict(cast, strict=True)


def load_stage_into(
    module: nn.Module, directory: str | Path, stage: StageName, verify_hash: bool = True
) -> None:
    """:func:`load_stage_state` then :func:`load_into`, labelled with the stage's file."""
    state = load_stage_state(directory, stage, verify_hash=verify_hash)
    entry = read_manifest(directory).stages[stage]
    load_into(module, state, file_label=str(Path(directory) / entry.file))


def _few(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_SHOWN])
    return f"[{shown}{', ...' if len(keys) > _SHOWN else ''}]"
