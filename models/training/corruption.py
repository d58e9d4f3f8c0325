"""Conditioning corruption for the upsamplers, and their paired training crops.

The paper (Ramesh et al. 2022, Appendix C): "For the first upsampling stage, we use gaussian
blur (kernel size 3, sigma 0.6) ... For the second upsampling stage, we use a more diverse BSR
degradation." The BSR degradation is Zhang et al. 2021, "Designing a Practical Degradation Model
for Deep Blind Image Super-Resolution" (BSRGAN, arXiv 2103.14006): blur, downsampling, noise and
JPEG compression, applied in a random order with random parameters.

:func:`bsr_degrade` is a simplified BSR. Kept: a random Gaussian blur (isotropic or anisotropic,
random angle), a resize through a random intermediate size with randomly chosen interpolations,
additive Gaussian noise (per-channel or grey) and JPEG re-encoding at a random quality. Left out:
the shuffled order of the degradations (ours is fixed: blur, resize, noise, JPEG), the second
blur, the processed camera-sensor noise, and the downsampling by the full scale factor (our
input is already the downsampled target; BSRGAN degrades a high-resolution image while shrinking
it). All randomness comes from the ``torch.Generator`` passed in, so a batch is reproducible.

Image tensors are ``[N x 3 x H x W]`` in [-1, 1].
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.configs import UpsamplerConfig

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area")


def gaussian_kernel2d(
    size: int, sigma_x: float, sigma_y: float | None = None, angle: float = 0.0
) -> torch.Tensor:
    """A normalised ``[size x size]`` Gaussian, anisotropic when ``sigma_y`` differs, rotated by ``angle``."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    r = (size - 1) / 2
    coords = torch.arange(size, dtype=torch.float64) - r
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    cos, sin = math.cos(angle), math.sin(angle)
    u = cos * xx + sin * yy
    v = -sin * xx + cos * yy
    kernel = torch.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return (kernel / kernel.sum()).float()


def _filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise 2-D filtering with reflect padding; x: [N x C x H x W], kernel: [k x k]."""
    c = x.shape[1]
    pad = kernel.shape[-1] // 2
    weight = kernel.to(x)[None, None].expand(c, 1, -1, -1)  # [C x 1 x k x k]
    return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), weight, groups=c)


def gaussian_blur(x: torch.Tensor, kernel_size: int = 3, sigma: float = 0.6) -> torch.Tensor:
    """The first upsampler's corruption: a fixed Gaussian blur (paper: kernel 3, sigma 0.6)."""
    return _filter(x, gaussian_kernel2d(kernel_size, sigma))


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _choice(generator: torch.Generator, options: tuple[str, ...]) -> str:
    return options[int(torch.randint(len(options), (), generator=generator))]


def _random_blur(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """BSRGAN's blur: kernel side 7–21 (odd, smaller on small images), sigma 0.1–2.4 per axis."""
    size = int(torch.randint(3, 11, (), generator=generator)) * 2 + 1  # 7..21
    size = min(size, 2 * (min(x.shape[-2:]) // 4) + 1)
    sigma_x = _uniform(generator, 0.1, 2.4)
    if float(torch.rand((), generator=generator)) < 0.5:
        sigma_y, angle = sigma_x, 0.0  # isotropic
    else:
        sigma_y, angle = _uniform(generator, 0.1, 2.4), _uniform(generator, 0.0, math.pi)
    return _filter(x, gaussian_kernel2d(size, sigma_x, sigma_y, angle))


def _random_resize(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Down to a random 1/2–1 of the side and back, each way with a random interpolation."""
    h, w = x.shape[-2:]
    scale = _uniform(generator, 0.5, 1.0)
    small = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = _resize(x, small, _choice(generator, INTERPOLATIONS))
    return _resize(x, (h, w), _choice(generator, ("nearest", "bilinear", "bicubic")))


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)
    return F.interpolate(x, size=size, mode=mode)


def _random_noise(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Additive Gaussian noise, sigma 1–25 of 255 levels, per channel or the same for all (grey)."""
    sigma = _uniform(generator, 1.0, 25.0) / 255.0 * 2.0  # [-1, 1] spans 2
    if float(torch.rand((), generator=generator)) < 0.4:
        noise = torch.randn((x.shape[0], 1, *x.shape[2:]), generator=generator).expand_as(x)
    else:
        noise = torch.randn(x.shape, generator=generator)
    return x + sigma * noise.to(x)


def jpeg_reencode(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG-compress a ``[3 x H x W]`` image in [-1, 1] at ``quality`` (1–95) and decode it."""
    pixels = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy()).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(decoded).permute(2, 0, 1).to(x) / 127.5 - 1


def bsr_degrade(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The second upsampler's corruption (simplified BSR, see the module docstring), per image.

    :param x: ``[N x 3 x H x W]`` in [-1, 1].
    :return: ``[N x 3 x H x W]`` in [-1, 1], each image degraded with its own random draw.
    """
    out = []
    for image in x.split(1):  # [1 x 3 x H x W]
        image = _random_blur(image, generator)
        image = _random_resize(image, generator)
        image = _random_noise(image, generator).clamp(-1, 1)
        quality = int(torch.randint(30, 96, (), generator=generator))
        out.append(jpeg_reencode(image[0], quality)[None])
    return torch.cat(out)


def downsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bicubic resize of ``[N x 3 x H x W]`` to ``size`` x ``size``."""
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(
        -1, 1
    )


def degrade_low_res(
    config: UpsamplerConfig, target: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """The upsampler's training input: the target downsampled to ``low_res_size``, then corrupted.

    :param target: ``[N x 3 x S x S]`` in [-1, 1] with ``S = config.unet.image_size``.
    :return: ``[N x 3 x s x s]`` with ``s = config.low_res_size``.
    """
    low = downsample(target, config.low_res_size)
    if config.corruption == "gaussian_blur":
        return gaussian_blur(low, config.blur_kernel, config.blur_sigma).clamp(-1, 1)
    if config.corruption == "bsr":
        return bsr_degrade(low, generator)
    raise ValueError(f"unknown corruption {config.corruption!r}")


def paired_random_crop(
    target: torch.Tensor,
    low_res: torch.Tensor,
    fraction: float,
    generator: torch.Generator,
    candidates: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Matching random crops of the target and of its low-resolution input.

    The crop side is ``fraction`` of each image's side; crop corners sit on the low-res pixel
    grid so the two crops cover the same region. With ``candidates`` > 1, each image draws that
    many corners and keeps the crop whose target has the highest pixel variance (crops that hit
    the object rather than flat background).

    :param target: ``[N x 3 x S x S]``; ``low_res``: ``[N x 3 x s x s]`` with ``S`` a multiple of ``s``.
    :return: ``([N x 3 x S*f x S*f], [N x 3 x s*f x s*f])``.
    """
    big, small = target.shape[-1], low_res.shape[-1]
    scale = big // small
    if scale * small != big:
        raise ValueError(f"target side {big} is not a multiple of the low-res side {small}")
    crop_small = max(1, round(small * fraction))
    crop_big = crop_small * scale
    targets, lows = [], []
    for i in range(target.shape[0]):
        corners = torch.randint(0, small - crop_small + 1, (max(1, candidates), 2), generator=generator)
        crops = [
            target[i, :, y * scale : y * scale + crop_big, x * scale : x * scale + crop_big]
            for y, x in corners.tolist()
        ]
        best = max(range(len(crops)), key=lambda k: float(crops[k].var())) if len(crops) > 1 else 0
        y, x = corners[best].tolist()
        targets.append(crops[best])
        lows.append(low_res[i, :, y : y + crop_small, x : x + crop_small])
    return torch.stack(targets), torch.stack(lows)
