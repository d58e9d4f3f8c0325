"""models.latents and models.diffusion.editing: slerp, text diffs, DDIM inversion, RePaint, on
small tensors and a closed-form model (fast)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from models.configs import DiffusionConfig
from models.diffusion import RowNoise
from models.diffusion.editing import ddim_invert, masked_step, repaint_sample_loop
from models.diffusion.samplers import ddim_sample_loop
from models.factory import create_diffusion
from models.latents import slerp, text_diff_direction, text_diff_frames


def unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_slerp_ends_are_exact_and_the_path_stays_on_the_sphere() -> None:
    a, b = unit(3, 16, 0), unit(3, 16, 1)
    assert torch.equal(slerp(a, b, 0.0), a) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-6)
    for w in (0.25, 0.5, 0.75):
        assert torch.allclose(slerp(a, b, w).norm(dim=1), torch.ones(3), atol=1e-5)
    # The angle to a grows linearly with the weight (a great circle, not a chord).
    angle = torch.arccos((a * b).sum(1))
    middle = torch.arccos((a * slerp(a, b, 0.5)).sum(1).clamp(-1, 1))
    assert torch.allclose(middle, angle / 2, atol=1e-4)
    assert torch.allclose(slerp(a, a, 0.3), a, atol=1e-6)  # parallel rows: no 0/0


def test_text_diff_direction_and_frames() -> None:
    base, target = unit(1, 8, 2), unit(1, 8, 3)
    direction = text_diff_direction(base, target)
    assert torch.allclose(direction, F.normalize(target - base, dim=1))
    with pytest.raises(ValueError, match="same CLIP embedding"):
        text_diff_direction(base, base.clone())
    image = unit(1, 8, 4)[0]
    frames = text_diff_frames(image, direction[0], [0.0, 0.25, 0.5])
    assert frames.shape == (3, 8) and torch.allclose(frames[0], image, atol=1e-6)
    closeness = (frames @ direction[0]).tolist()
    assert closeness == sorted(closeness)  # each frame nearer the diff direction


class ExactModel:
    """ε-prediction that is exact for data concentrated at one image x*: ε̂ = (x_t - √ᾱ_t x*) / √(1-ᾱ_t)."""

    def __init__(self, target: torch.Tensor, alphas_cumprod: Any):
        self.target = target
        self.alpha_bar = torch.tensor(alphas_cumprod, dtype=torch.float64)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **_: Any) -> torch.Tensor:
        ab = self.alpha_bar[t].view(-1, 1, 1, 1).to(x.dtype)
        return (x - ab.sqrt() * self.target) / (1 - ab).sqrt()


def test_ddim_inversion_then_ddim_gives_the_image_back() -> None:
    base = create_diffusion(DiffusionConfig(schedule="cosine"))
    diffusion = create_diffusion(DiffusionConfig(schedule="cosine"), 10)
    x0 = torch.rand(2, 3, 8, 8) * 1.6 - 0.8
    model = ExactModel(x0, base.alphas_cumprod)
    latent = ddim_invert(model, x0, diffusion)
    # For data concentrated at x0 the η = 0 ODE runs x0 towards √ᾱ_T x0, nearly 0 on the cosine
    # schedule: the latent is far from the image, and DDIM brings it back.
    assert latent.abs().max() < 0.05 and (latent - x0).abs().mean() > 0.1
    back = ddim_sample_loop(model, latent, diffusion)
    assert torch.allclose(back, x0, atol=1e-4)


def test_repaint_keeps_the_known_region_and_samples_the_rest() -> None:
    base = create_diffusion(DiffusionConfig(schedule="cosine"))
    diffusion = create_diffusion(DiffusionConfig(schedule="cosine"), 6)
    drawn = torch.full((2, 3, 8, 8), 0.5)
    model = ExactModel(drawn, base.alphas_cumprod)  # the model draws 0.5 everywhere
    known = torch.full((2, 3, 8, 8), -0.5)
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :, 4:] = 1
    noise = RowNoise([1, 2])
    x = noise.randn((3, 8, 8))
    out = repaint_sample_loop(
        model,
        x,
        diffusion,
        masked_step("ddim", diffusion, noise),
        known=known,
        mask=mask,
        noise=noise,
        resample=3,
    )
    assert torch.equal(out[..., :4], known[..., :4])  # pasted at the last step
    assert torch.allclose(out[..., 4:], drawn[..., 4:], atol=1e-3)


def test_repaint_rows_depend_only_on_their_own_seed() -> None:
    base = create_diffusion(DiffusionConfig(schedule="cosine"))
    diffusion = create_diffusion(DiffusionConfig(schedule="cosine"), 4)
    model = ExactModel(torch.zeros(1, 3, 8, 8), base.alphas_cumprod)
    known, mask = torch.ones(3, 3, 8, 8), torch.ones(3, 1, 8, 8)
    mask[..., :2, :] = 0

    def run(seeds: list[int]) -> torch.Tensor:
        noise = RowNoise(seeds)
        step = masked_step("ddpm", diffusion, noise)
        return repaint_sample_loop(
            model,
            noise.randn((3, 8, 8)),
            diffusion,
            step,
            known=known[: len(seeds)],
            mask=mask[: len(seeds)],
            noise=noise,
            resample=2,
        )

    together, alone = run([5, 6, 7]), run([6])
    assert torch.equal(together[1], alone[0])
