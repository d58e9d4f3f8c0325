"""Classifier-free guidance: one batched forward, the right mix, the right channels."""

from __future__ import annotations

import pytest
import torch

from models.configs import DiffusionConfig
from models.diffusion import ClassifierFreeGuidance, RowNoise, sample
from models.factory import create_diffusion


class CountingModel:
    """out = x · c + t/1000 per row, recording the batch size of every call."""

    def __init__(self, learned_sigma: bool = False):
        self.calls: list[int] = []
        self.learned_sigma = learned_sigma

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, drop: torch.Tensor, mode: str = "a"
    ):
        assert mode == "a" and len(c) == len(x) == len(t) == len(drop)
        self.calls.append(len(x))
        out = x * torch.where(drop, 0.5, c)[:, None] + t[:, None] / 1000
        return torch.cat([out, 10 * c[:, None].expand_as(x)], dim=1) if self.learned_sigma else out


def _inputs() -> tuple[torch.Tensor, torch.Tensor, dict, dict]:
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([5, 500, 999])
    cond = {"c": torch.tensor([2.0, 3.0, 4.0]), "drop": torch.zeros(3, dtype=torch.bool), "mode": "a"}
    uncond = {"c": torch.tensor([2.0, 3.0, 4.0]), "drop": torch.ones(3, dtype=torch.bool), "mode": "a"}
    return x, t, cond, uncond


def test_scale_one_is_the_conditional_model_alone() -> None:
    x, t, cond, uncond = _inputs()
    model = CountingModel()
    out = ClassifierFreeGuidance(model, 1.0, cond, uncond)(x, t)
    assert model.calls == [3]  # no doubled batch
    torch.testing.assert_close(out, model(x, t, **cond))


def test_scale_zero_is_the_unconditional_model_alone() -> None:
    x, t, cond, uncond = _inputs()
    model = CountingModel()
    out = ClassifierFreeGuidance(model, 0.0, cond, uncond)(x, t)
    assert model.calls == [3]
    torch.testing.assert_close(out, model(x, t, **uncond))


@pytest.mark.parametrize("scale", [0.5, 3.0, -1.0])
def test_scale_s_is_the_linear_mix_in_one_forward(scale: float) -> None:
    x, t, cond, uncond = _inputs()
    model = CountingModel()
    out = ClassifierFreeGuidance(model, scale, cond, uncond)(x, t)
    assert model.calls == [6]  # both halves in ONE batched call
    c, u = model(x, t, **cond), model(x, t, **uncond)
    torch.testing.assert_close(out, u + scale * (c - u))


def test_learned_sigma_channels_come_from_the_conditional_half() -> None:
    x, t, cond, uncond = _inputs()
    model = CountingModel(learned_sigma=True)
    out = ClassifierFreeGuidance(model, 3.0, cond, {**uncond, "c": torch.zeros(3)}, guided_channels=2)(x, t)
    c, u = model(x, t, **cond), model(x, t, **{**uncond, "c": torch.zeros(3)})
    torch.testing.assert_close(out[:, :2], u[:, :2] + 3.0 * (c[:, :2] - u[:, :2]))
    torch.testing.assert_close(out[:, 2:], c[:, 2:])


def test_call_time_kwargs_go_to_both_halves() -> None:
    x, t, cond, uncond = _inputs()
    seen: dict[str, torch.Tensor] = {}

    def model(
        x: torch.Tensor,
        t: torch.Tensor,
        c: torch.Tensor,
        drop: torch.Tensor,
        mode: str,
        low_res: torch.Tensor,
    ):
        seen["low_res"] = low_res
        return x * low_res[:, None]

    low_res = torch.tensor([1.0, 2.0, 3.0])
    ClassifierFreeGuidance(model, 2.0, cond, uncond)(x, t, low_res=low_res)
    torch.testing.assert_close(seen["low_res"], torch.cat([low_res, low_res]))
    with pytest.raises(ValueError, match="given twice"):
        ClassifierFreeGuidance(model, 2.0, cond, uncond)(x, t, c=low_res)


def test_mismatched_halves_are_refused() -> None:
    x, t, cond, uncond = _inputs()
    with pytest.raises(ValueError, match="keys differ"):
        ClassifierFreeGuidance(CountingModel(), 2.0, cond, {"c": cond["c"]})
    with pytest.raises(ValueError, match="differs between halves"):
        ClassifierFreeGuidance(CountingModel(), 2.0, cond, {**uncond, "mode": "b"})(x, t)


def test_guidance_through_a_sampler_is_transparent() -> None:
    """The sampler sees an ordinary model: one doubled call per step, original timesteps."""
    spaced = create_diffusion(DiffusionConfig(), 4)
    model = CountingModel()
    _, _, cond, uncond = _inputs()
    guided = ClassifierFreeGuidance(model, 2.0, cond, uncond)
    out = sample("ddim", guided, (3, 2), spaced, RowNoise([1, 2, 3]))
    assert out.shape == (3, 2) and model.calls == [6] * 4
