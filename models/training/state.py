"""Full training state on disk: written atomically, read back for resuming.

A checkpoint (``<out>/checkpoints/<stage>.pt``) holds everything a restart needs to continue
bit-for-bit: the live weights, the EMA weights, the optimizer and scheduler, the step (which is
also the data-stream position), the examples seen, the training time spent so far, and the RNG
states. It is written to a temporary file in the same directory, flushed to disk and renamed
over the old one, so a crash at any moment leaves either the old or the new checkpoint.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoints import atomic_path


def checkpoint_path(out_dir: str | Path, stage: str) -> Path:
    return Path(out_dir) / "checkpoints" / f"{stage}.pt"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary file + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The saved training state, or ``None`` when there is none yet."""
    path = Path(path)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
