"""Classifier-free guidance as a model wrapper (the ``model_fn`` of GLIDE's text2im notebook).

ε̂ = ε(x, ∅) + s · (ε(x, c) - ε(x, ∅))   (Ho & Salimans 2022, eq. 6)

Both halves run in ONE batched forward; the samplers never know about guidance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class ClassifierFreeGuidance:
    def __init__(
        self,
        model: Callable[..., torch.Tensor],
        scale: float,
        cond_kwargs: dict[str, Any],
        uncond_kwargs: dict[str, Any],
        guided_channels: int | None = None,
    ):
        self.model = model
        self.scale = float(scale)
        self.cond_kwargs = cond_kwargs
        self.uncond_kwargs = uncond_kwargs
        # With a learned variance only the first channels (the ε part) are mixed; the variance
        # channels come from the conditional half.
        self.guided_channels = guided_channels

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **_: Any) -> torch.Tensor:
        if self.scale == 1.0:
            return self.model(x, t, **self.cond_kwargs)
        if self.scale == 0.0:
            return self.model(x, t, **self.uncond_kwargs)
        kwargs = {key: _pair(self.cond_kwargs[key], self.uncond_kwargs[key], key) for key in self.cond_kwargs}
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), **kwargs)
        cond, uncond = out.chunk(2)
        c = self.guided_channels if self.guided_channels is not None else cond.shape[1]
        mixed = uncond[:, :c] + self.scale * (cond[:, :c] - uncond[:, :c])
        return torch.cat([mixed, cond[:, c:]], dim=1)


def _pair(cond: Any, uncond: Any, key: str) -> Any:
    if isinstance(cond, torch.Tensor):
        return torch.cat([cond, uncond])
    if cond != uncond:
        raise ValueError(f"non-tensor guidance argument {key!r} differs between halves")
    return cond
