"""Moves in the CLIP latent space (Ramesh et al. 2022, §3): spherical interpolation and text diffs.

"Both are unit-norm vectors": CLIP embeddings live on the sphere, so the paper interpolates them
with slerp (§3.2) and builds a text diff as the normalised difference of two caption embeddings,
then rotates the image embedding towards it (§3.3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def slerp(a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    """Spherical interpolation along the great circle from a to b, row by row.

    z_θ = sin((1-w)Ω)/sin Ω · a + sin(wΩ)/sin Ω · b, with Ω the angle between a and b (§3.2:
    "z_iθ = slerp(z_i1, z_i2, θ)"). Rows are flattened to vectors, so x_T latents [N x C x H x W]
    interpolate as well as embeddings [N x D]; for unit vectors the result stays unit norm. Nearly
    parallel rows fall back to linear interpolation (Ω → 0 makes the sine ratios 0/0).

    :param a: [N x ...]; :param b: like a; :param weight: 0 gives a, 1 gives b.
    :return: [N x ...] float32.
    """
    if a.shape != b.shape:
        raise ValueError(f"slerp needs equal shapes, got {list(a.shape)} and {list(b.shape)}")
    flat_a, flat_b = a.float().flatten(1), b.float().flatten(1)  # [N x K]
    cos = (F.normalize(flat_a, dim=1) * F.normalize(flat_b, dim=1)).sum(1).clamp(-1, 1)  # [N]
    omega = torch.arccos(cos)  # [N]
    sin = torch.sin(omega)
    linear = sin.abs() < 1e-6
    safe = torch.where(linear, torch.ones_like(sin), sin)
    wa = torch.where(linear, 1 - weight, torch.sin((1 - weight) * omega) / safe)  # [N]
    wb = torch.where(linear, torch.full_like(sin, weight), torch.sin(weight * omega) / safe)
    return (wa[:, None] * flat_a + wb[:, None] * flat_b).view(a.shape)


def text_diff_direction(base: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """z_d = normalize(z_t(target) - z_t(base)) (§3.3) from two caption embeddings [N x D].

    :raises ValueError: when the captions embed to the same vector (there is no direction).
    """
    difference = target.float() - base.float()  # [N x D]
    if bool((difference.norm(dim=1) < 1e-6).any()):
        raise ValueError("the base and target captions have the same CLIP embedding: no text diff")
    return F.normalize(difference, dim=1)


def text_diff_frames(image_embed: torch.Tensor, direction: torch.Tensor, angles: list[float]) -> torch.Tensor:
    """z_θ = slerp(z_i, z_d, θ) for each θ (§3.3: "we rotate between the image CLIP embedding and
    the text diff vector ... with θ linearly spaced from 0 to a maximum value, typically in
    [0.25, 0.50]").

    :param image_embed: z_i [D]; :param direction: z_d [D]. :return: [len(angles) x D], unit norm.
    """
    frames = [slerp(image_embed[None], direction[None], theta)[0] for theta in angles]
    return F.normalize(torch.stack(frames), dim=1)
