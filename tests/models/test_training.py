"""The training loop: EMA, checkpoints, bit-for-bit resume, data streams and corruptions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from models.configs import ModelConfig
from models.training.config import TrainConfig, get_train_config, stage_minutes
from models.training.corruption import (
    bsr_degrade,
    degrade_low_res,
    gaussian_blur,
    gaussian_kernel2d,
    paired_random_crop,
)
from models.training.ema import EMA
from models.training.loop import Trainer, learning_rate
from models.training.state import atomic_torch_save, checkpoint_path, load_checkpoint
from models.training.stream import ExampleStream


class ToyTask:
    """Regression of a fixed random linear map, with dropout (exercises the global RNG)."""

    stage = "toy"
    batch_size = 8

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.module = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.1), nn.ReLU(), nn.Linear(16, 2))
        self.target = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))

    def batch(self, step: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(self.batch_size, 4, generator=generator)

    def loss(self, batch: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        noise = 0.01 * torch.randn(self.batch_size, 2, generator=generator)
        return ((self.module(batch) - batch @ self.target - noise) ** 2).mean(), {}

    def after_step(self) -> None:
        pass


def toy_config(**kw: object) -> TrainConfig:
    base = {
        "steps": 12,
        "lr": 1e-2,
        "warmup_steps": 3,
        "ema_decay": 0.9,
        "log_every": 4,
        "checkpoint_every": 5,
    }
    return TrainConfig(batch_size=ToyTask.batch_size, **{**base, **kw})  # type: ignore[arg-type]


def test_toy_run_lowers_loss_and_checkpoints(tmp_path: Path) -> None:
    task = ToyTask()
    held = task.batch(10**6, torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = float(task.loss(held, torch.Generator().manual_seed(6))[0])
    result = Trainer(task, toy_config(steps=40), tmp_path, show_progress=False).run()
    task.module.eval()
    with torch.no_grad():
        after = float(task.loss(held, torch.Generator().manual_seed(6))[0])
    assert result.steps == 40 and result.examples == 320 and not result.interrupted
    assert after < 0.5 * before
    state = load_checkpoint(checkpoint_path(tmp_path, "toy"))
    assert state is not None and state["step"] == 40
    assert set(state) >= {"module", "ema", "optimizer", "rng", "elapsed_seconds", "train_config"}
    assert (tmp_path / "logs" / "toy.jsonl").read_text().count("\n") == 10


def test_resume_is_bit_for_bit(tmp_path: Path) -> None:
    straight = Trainer(ToyTask(), toy_config(), tmp_path / "a", show_progress=False)
    straight.run()

    first = Trainer(ToyTask(), toy_config(), tmp_path / "b", show_progress=False)
    for _ in range(7):  # interrupted after 7 of 12 steps, past the checkpoint at 5
        first.train_step()
    first.save()
    resumed = Trainer(ToyTask(), toy_config(), tmp_path / "b", show_progress=False)
    result = resumed.run()

    assert result.steps == 12
    for name, value in straight.module.state_dict().items():
        assert torch.equal(value, resumed.module.state_dict()[name]), name
    for name, value in straight.averaged_state_dict().items():
        assert torch.equal(value, resumed.averaged_state_dict()[name]), name


def test_resume_refuses_other_batch_size(tmp_path: Path) -> None:
    Trainer(ToyTask(), toy_config(steps=2), tmp_path, show_progress=False).run()
    other = Trainer(ToyTask(), toy_config(steps=4, seed=3), tmp_path, show_progress=False)
    with pytest.raises(ValueError, match="seed"):
        other.run()


def test_finished_run_does_not_train_again(tmp_path: Path) -> None:
    Trainer(ToyTask(), toy_config(steps=3), tmp_path, show_progress=False).run()
    again = Trainer(ToyTask(), toy_config(steps=3), tmp_path, show_progress=False)
    assert again.run().steps == 3


def test_atomic_save_leaves_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "x.pt"
    atomic_torch_save({"a": 1}, path)

    class Unpicklable:
        def __reduce__(self) -> tuple:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"a": Unpicklable()}, path)
    assert torch.load(path, weights_only=False) == {"a": 1}
    assert os.listdir(path.parent) == ["x.pt"]  # no temporary file left behind


def test_ema_tracks_with_warmup() -> None:
    module = nn.Linear(2, 2)
    ema = EMA(module, decay=0.99)
    initial = module.weight.detach().clone()
    with torch.no_grad():
        module.weight.fill_(1.0)
    ema.update(module)  # the first decay is min(0.99, 1/10) = 0.1: mostly the new weights
    assert torch.allclose(ema.shadow["weight"], 0.1 * initial + 0.9)
    copy = nn.Linear(2, 2)
    ema.copy_to(copy)
    assert torch.equal(copy.weight, ema.shadow["weight"])
    restored = EMA(nn.Linear(2, 2), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.num_updates == 1 and restored.decay == 0.99


def test_learning_rate_warmup_then_cosine() -> None:
    cfg = TrainConfig(lr=1.0, warmup_steps=10, steps=100)
    assert learning_rate(cfg, 0, 0.0) == pytest.approx(0.1)
    assert learning_rate(cfg, 50, 0.0) == pytest.approx(1.0)
    assert learning_rate(cfg, 99, 1.0) == pytest.approx(0.1)


def test_presets_and_time_split() -> None:
    assert get_train_config("tiny", "decoder", lr=5e-4, steps=None).lr == 5e-4
    assert sum(stage_minutes(120).values()) == pytest.approx(120)


class CountingSource:
    """Examples numbered per seed; finite, to exercise reopening."""

    def __init__(self, length: int = 7) -> None:
        self.length = length

    def examples(self, size: int, seed: int):
        return iter([(seed, i) for i in range(self.length)])


def test_stream_is_addressed_by_step() -> None:
    stream = ExampleStream(CountingSource(), 8, batch_size=3, seed=0, label="x", block_batches=4)
    sequential = [stream.batch(k) for k in range(10)]
    fresh = ExampleStream(CountingSource(), 8, batch_size=3, seed=0, label="x", block_batches=4)
    assert fresh.batch(6) == sequential[6]  # a resume finds its place
    assert fresh.batch(2) == sequential[2]  # and can go back
    assert sequential[0] != sequential[4]  # blocks differ
    assert all(len(b) == 3 for b in sequential)


# ----------------------------------------------------------------------------- corruption


def test_gaussian_blur_keeps_shape_and_constants() -> None:
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    y = gaussian_blur(x, 3, 0.6)
    assert y.shape == x.shape
    flat = torch.full((1, 3, 8, 8), 0.3)
    assert torch.allclose(gaussian_blur(flat), flat, atol=1e-6)
    kernel = gaussian_kernel2d(5, 1.0, 2.0, 0.3)
    assert kernel.shape == (5, 5) and kernel.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_bsr_degrade_is_seeded_and_changes_images() -> None:
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    a = bsr_degrade(x, torch.Generator().manual_seed(0))
    b = bsr_degrade(x, torch.Generator().manual_seed(0))
    c = bsr_degrade(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1 and not torch.allclose(a, x, atol=0.05)


def test_degrade_low_res_for_both_upsamplers() -> None:
    config = ModelConfig()
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 256, 256) * 2 - 1
    assert degrade_low_res(config.sr256, target, generator).shape == (2, 3, 64, 64)
    big = torch.rand(1, 3, 1024, 1024) * 2 - 1
    assert degrade_low_res(config.sr1024, big, generator).shape == (1, 3, 256, 256)


def test_paired_crops_cover_the_same_region() -> None:
    target = torch.arange(64.0).view(1, 1, 8, 8).expand(2, 3, 8, 8) * 4  # 32x32 after upsampling below
    target = torch.nn.functional.interpolate(target, scale_factor=4, mode="nearest")
    low = target[:, :, ::4, ::4]
    crop, low_crop = paired_random_crop(target, low, 0.25, torch.Generator().manual_seed(3), candidates=3)
    assert crop.shape == (2, 3, 8, 8) and low_crop.shape == (2, 3, 2, 2)
    assert torch.equal(crop[:, :, ::4, ::4], low_crop)


def test_high_noise_fraction_moves_timesteps_to_the_noisy_end() -> None:
    from models.training.stages import sample_timesteps

    def draw(fraction: float, seed: int = 0) -> torch.Tensor:
        return sample_timesteps(20_000, 1000, fraction, torch.Generator().manual_seed(seed))

    # 0 is the plain uniform draw, unchanged (runs without the option replay exactly).
    torch.testing.assert_close(
        draw(0.0), torch.randint(0, 1000, (20_000,), generator=torch.Generator().manual_seed(0))
    )
    assert torch.equal(draw(0.5), draw(0.5)) and not torch.equal(draw(0.5), draw(0.5, seed=1))
    everything = draw(1.0)
    assert int(everything.min()) >= 900 and int(everything.max()) <= 999
    half = draw(0.5)
    assert int(half.min()) >= 0 and int(half.max()) <= 999
    # Half from [900, 1000) plus the uniform half's tenth: 55% of draws at t >= 900.
    assert abs(float((half >= 900).float().mean()) - 0.55) < 0.02


def test_bf16_autocast_trains_and_keeps_float32_weights(tmp_path: Path) -> None:
    """Under ``bf16`` the toy run still lowers its loss, its weights and EMA stay float32, and it
    ends elsewhere than the float32 run (the autocast is really on)."""
    after = {}
    for bf16 in (False, True):
        task = ToyTask()
        held = task.batch(10**6, torch.Generator().manual_seed(5))
        with torch.no_grad():
            before = float(task.loss(held, torch.Generator().manual_seed(6))[0])
        trainer = Trainer(task, toy_config(steps=40, bf16=bf16), tmp_path / str(bf16), show_progress=False)
        trainer.run()
        assert all(p.dtype == torch.float32 for p in task.module.parameters())
        assert all(v.dtype == torch.float32 for v in trainer.averaged_state_dict().values())
        task.module.eval()
        with torch.no_grad():
            after[bf16] = float(task.loss(held, torch.Generator().manual_seed(6))[0])
        assert after[bf16] < 0.5 * before
    assert after[True] != after[False]


def test_edge_weights_sit_on_outlines_and_keep_the_mean() -> None:
    from models.data.shapes import ShapesWorld, coverage
    from models.evaluation.evaluate import to_model_input
    from models.training.edges import edge_weights

    examples = ShapesWorld(0).batch(6, 64)
    weights = edge_weights(to_model_input([e.image for e in examples]), 9.0)  # [6 x 1 x 64 x 64]
    assert weights.shape == (6, 1, 64, 64)
    torch.testing.assert_close(weights.mean(dim=(2, 3)), torch.ones(6, 1))
    for example, weight in zip(examples, weights, strict=True):
        alpha = torch.from_numpy(coverage(example.spec, 64)).float()  # [64 x 64] object coverage
        edge = (alpha > 0.05) & (alpha < 0.95)
        inside, outside = alpha >= 0.999, alpha == 0
        # The outline's band outweighs the flat inside and outside several times over.
        assert weight[0][edge].mean() > 3 * weight[0][inside | outside].mean()
    flat = edge_weights(torch.zeros(2, 3, 8, 8), 9.0)
    assert torch.equal(flat, torch.ones(2, 1, 8, 8))
    assert torch.equal(edge_weights(to_model_input([examples[0].image]), 0.0), torch.ones(1, 1, 64, 64))
    with pytest.raises(ValueError, match="strength"):
        edge_weights(flat, -1.0)


def test_pixel_weight_scales_the_simple_loss() -> None:
    from models.configs import DiffusionConfig
    from models.factory import create_diffusion

    diffusion = create_diffusion(DiffusionConfig(schedule="cosine", prediction="v"))
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 700])

    def model(x_t: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x_t)

    plain = diffusion.training_losses(model, x, t, noise=noise)["mse"]
    doubled = diffusion.training_losses(model, x, t, noise=noise, pixel_weight=torch.full((2, 1, 4, 4), 2.0))[
        "mse"
    ]
    torch.testing.assert_close(doubled, 2 * plain)
    only_first_row = torch.zeros(2, 1, 4, 4)
    only_first_row[..., 0, :] = 4.0
    target = diffusion.v_target(x, t, noise)
    torch.testing.assert_close(
        diffusion.training_losses(model, x, t, noise=noise, pixel_weight=only_first_row)["mse"],
        (target[..., 0, :] ** 2).mean(dim=(1, 2)),
    )
