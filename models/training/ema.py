"""Exponential moving average of a network's weights (the weights the paper samples with).

    shadow <- d * shadow + (1 - d) * theta,   d = min(decay, (1 + n) / (10 + n))

after the n-th optimizer step. The warm-up of ``d`` (as in TensorFlow's
``ExponentialMovingAverage`` with ``num_updates``) keeps the average from being dominated by the
random initial weights in short runs: with decay 0.9999 (the paper's, for 600K+ steps) the
average would otherwise remember the initialisation for ~10K steps.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


class EMA:
    """Float32 shadow copies of a module's floating-point parameters and buffers."""

    def __init__(self, module: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: value.detach().float().clone() for name, value in self._tracked(module)
        }

    @staticmethod
    def _tracked(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        for name, value in module.state_dict(keep_vars=True).items():
            if value.is_floating_point():
                yield name, value

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Fold the module's current weights into the average (call after each optimizer step)."""
        decay = self.current_decay()
        for name, value in self._tracked(module):
            self.shadow[name].lerp_(value.detach().float(), 1.0 - decay)
        self.num_updates += 1

    def averaged_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The module's state dict with the averaged weights in place of the live ones."""
        state = {name: value.detach().clone() for name, value in module.state_dict().items()}
        for name, value in self.shadow.items():
            state[name] = value.to(state[name].dtype).clone()
        return state

    def copy_to(self, module: nn.Module) -> None:
        module.load_state_dict(self.averaged_state_dict(module))

    def state_dict(self) -> dict[str, object]:
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "shadow": self.shadow,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        shadow = state["shadow"]
        assert isinstance(shadow, dict)
        missing = set(self.shadow) ^ set(shadow)
        if missing:
            raise KeyError(f"EMA state does not match the module: {sorted(missing)[:5]}")
        self.shadow = {name: tensor.float().clone() for name, tensor in shadow.items()}
        self.decay = float(state["decay"])  # type: ignore[arg-type]
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])  # type: ignore[call-overload]

    def to(self, device: torch.device | str) -> EMA:
        self.shadow = {name: value.to(device) for name, value in self.shadow.items()}
        return self
