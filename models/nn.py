"""Small building blocks shared by the networks (guided-diffusion's ``nn.py``).

Nothing here knows about diffusion: these are layers and initialisation helpers.
"""

from __future__ import annotations

import math
from math import gcd
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back, so bf16 / fp16 networks normalise stably.

    Works whether the module's own parameters are float32 (autocast) or half precision
    (a network cast with ``.to(torch.bfloat16)``).

    ``upcast`` False (set by :func:`models.execution.prepare_network`) hands a half-precision
    ``x`` to the kernel as it is, without the two full-size copies: the CPU kernel accumulates in
    float32 with float32 parameters, giving the same numbers (to 1 ulp); the CUDA kernel
    accumulates in float32 too but wants the parameters in ``x``'s dtype.
    """

    upcast = True
    # Set by models.execution.prepare_network (ExecutionConfig.fold_scale_shift).
    fold_scale_shift = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return self._normalize(x, weight, bias)

    def scale_shift(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """``norm(x) * (1 + scale) + shift`` (FiLM), ``scale`` and ``shift`` [N x C x 1 x 1].

        With ``fold_scale_shift`` and one row, the FiLM is folded into the norm's own affine
        (weight × (1 + scale), bias × (1 + scale) + shift, in float32), so the map is read and
        written once instead of three times: elementwise passes over large maps are most of an
        upsampler's forward on a CPU (sr1024 at 1024², one row at a time: 60%).
        """
        if not (
            self.fold_scale_shift and x.shape[0] == 1 and self.weight is not None and self.bias is not None
        ):
            return self(x) * (1 + scale) + shift
        factor = 1 + scale.reshape(-1).float()  # [C]
        weight = self.weight.float() * factor
        bias = self.bias.float() * factor + shift.reshape(-1).float()
        return self._normalize(x, weight, bias)

    def _normalize(
        self, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """The norm with float32 ``weight`` / ``bias``, in ``x``'s dtype (see the class docstring)."""
        if not self.upcast and x.dtype == torch.bfloat16 and x.device.type == "cpu":
            return _group_norm(x, self.num_groups, weight, bias, self.eps)
        if not self.upcast and x.dtype in (torch.bfloat16, torch.float16) and x.device.type == "cuda":
            weight = None if weight is None else weight.to(x.dtype)
            bias = None if bias is None else bias.to(x.dtype)
            return _group_norm(x, self.num_groups, weight, bias, self.eps)
        return _group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


# PyTorch's channels-last GroupNorm on the CPU vectorises across the channels of one pixel: when
# they span less than 32 bytes it crawls. sr1024's 8-channel maps at 1024² in bf16 took 25–30 ms
# a call against 1.5 ms for the contiguous kernel, so half of sr1024's forward was GroupNorm
# (2-core AMX Xeon; fp32 at 4 channels the same). Such inputs go through NCHW and back: the two
# copies cost far less, and 16 bf16 or 8 fp32 channels and up keep the channels-last kernel,
# which is the faster one there.
_CHANNELS_LAST_MIN_BYTES = 32
# The same kernel takes another way for maps of fewer than 1024 pixels (one task per row and
# group), and there, in bf16, it walks a group's pixels one at a time when the group's channels
# span less than 32 bytes: about 0.8 µs a pixel whatever the width. The decoder's 16², 8² and 4²
# levels (32 groups of 2–8 channels) took 0.42 ms a norm at batch 2 against 0.07 through float32
# and back, with the same numbers (the kernel accumulates in float32 either way); GroupNorm was
# 36% of a bf16 decoder forward at batch 2 and 53% at batch 16 (2-core AMX Xeon, 2026-12-06).
_SMALL_MAP_PIXELS = 1024


def _group_norm(
    x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """``F.group_norm``, routed around the slow channels-last CPU kernels (above)."""
    if (
        x.device.type == "cpu"
        and x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        if x.shape[1] * x.element_size() < _CHANNELS_LAST_MIN_BYTES:
            out = F.group_norm(x.contiguous(), groups, weight, bias, eps)
            return out.contiguous(memory_format=torch.channels_last)
        if (
            x.dtype == torch.bfloat16
            and x.shape[2] * x.shape[3] < _SMALL_MAP_PIXELS
            and x.shape[1] // groups * x.element_size() < _CHANNELS_LAST_MIN_BYTES
        ):
            return F.group_norm(x.float(), groups, weight, bias, eps).to(x.dtype)
    return F.group_norm(x, groups, weight, bias, eps)


def norm_groups(channels: int, max_groups: int = 32) -> int:
    """The largest power-of-two group count up to ``max_groups`` that divides ``channels``.

    32 for the usual widths (multiples of 32); 8 for 8 channels, 16 for 48, 1 for odd widths.
    """
    return gcd(max_groups, channels)


def normalization(channels: int) -> GroupNorm32:
    """A GroupNorm layer of 32 groups, or fewer when ``channels`` is small or not divisible by 32."""
    return GroupNorm32(norm_groups(channels), channels)


def zero_module(module: ModuleT) -> ModuleT:
    """Zero a module's parameters in place and return it (the residual branches start as identity)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal timestep embeddings (Vaswani et al. 2017; guided-diffusion's ``timestep_embedding``).

    Computed in float32 whatever the caller's precision: cast the result to the network's dtype.

    :param timesteps: [N] integer or fractional timesteps (respaced samplers pass floats).
    :param dim: embedding width; an odd width gets one zero column.
    :param max_period: the lowest frequency is 1 / max_period.
    :return: [N x dim] float32 embeddings, cosines then sines.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )  # [half]
    args = timesteps.float()[:, None] * freqs[None]  # [N x half]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [N x 2*half]
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (works on the meta device, where nothing is allocated)."""
    return sum(p.numel() for p in module.parameters())


def module_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of a module's first floating-point parameter (float32 when it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32
