"""Classifier-free guidance as a model wrapper (the ``model_fn`` of GLIDE's text2im notebook).

Ho & Salimans 2022, eq. 6: "ε̃_θ(z_λ, c) = (1 + w) ε_θ(z_λ, c) - w ε_θ(z_λ)"; with s = 1 + w,

    ε̃ = ε(x_t, ∅) + s · (ε(x_t, c) - ε(x_t, ∅)).

Both halves run in ONE batched forward; the samplers never know about guidance. The same mix
serves x_0- and v-predicting networks: at fixed x_t and t, ε, x_0 and v are affine images of one
another with the same coefficients for both halves, so mixing any of them mixes the others alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class ClassifierFreeGuidance:
    """Callable like the model it wraps: ``(x, t, **kwargs) -> output``.

    :param model: the network, ``model(x, t, **kwargs)`` → [N x C' x ...].
    :param scale: s; 1.0 runs only the conditional model, 0.0 only the unconditional one.
    :param cond_kwargs: the conditional half's keyword arguments (tensors [N x ...]).
    :param uncond_kwargs: the unconditional half's, with the same keys (e.g. ``drop_text`` True).
        Tensors are concatenated cond-first along dim 0; other values must be equal and pass through.
    :param guided_channels: mix only the first this many channels of dim 1 (None: all). With a
        learned variance pass C: the variance channels are taken from the conditional half.
    Keyword arguments given at call time (a sampler's ``model_kwargs``) go to both halves.
    """

    def __init__(
        self,
        model: Callable[..., torch.Tensor],
        scale: float,
        cond_kwargs: dict[str, Any],
        uncond_kwargs: dict[str, Any],
        guided_channels: int | None = None,
    ):
        if set(cond_kwargs) != set(uncond_kwargs):
            raise ValueError(f"cond and uncond keys differ: {sorted(cond_kwargs)} vs {sorted(uncond_kwargs)}")
        self.model = model
        self.scale = float(scale)
        self.cond_kwargs = cond_kwargs
        self.uncond_kwargs = uncond_kwargs
        self.guided_channels = guided_channels

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """x [N x ...], t [N] → guided output [N x C' x ...]."""
        clash = set(kwargs) & set(self.cond_kwargs)
        if clash:
            raise ValueError(f"keyword arguments given twice: {sorted(clash)}")
        if self.scale == 1.0:
            return self.model(x, t, **self.cond_kwargs, **kwargs)
        if self.scale == 0.0:
            return self.model(x, t, **self.uncond_kwargs, **kwargs)
        n = x.shape[0]
        paired = {key: _pair(self.cond_kwargs[key], self.uncond_kwargs[key], key) for key in self.cond_kwargs}
        shared = {
            key: _pair(value, value, key) if _is_batched(value, n) else value for key, value in kwargs.items()
        }
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), **paired, **shared)  # [2N x C' x ...]
        cond, uncond = out[:n], out[n:]
        c = cond.shape[1] if self.guided_channels is None else self.guided_channels
        mixed = uncond[:, :c] + self.scale * (cond[:, :c] - uncond[:, :c])
        return torch.cat([mixed, cond[:, c:]], dim=1)


def _is_batched(value: Any, n: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n


def _pair(cond: Any, uncond: Any, key: str) -> Any:
    """Tensors: cond then uncond along dim 0; anything else must be equal in both halves."""
    if isinstance(cond, torch.Tensor):
        if not isinstance(uncond, torch.Tensor):
            raise ValueError(f"guidance argument {key!r} is a tensor in one half only")
        return torch.cat([cond, uncond])
    if cond != uncond:
        raise ValueError(f"non-tensor guidance argument {key!r} differs between halves")
    return cond
