"""Data-parallel replicas: real processes in a real gloo group on the loopback interface."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from models.training.config import TrainConfig
from models.training.loop import Trainer, TrainResult
from models.training.replicas import Replica, run_replicas
from models.training.state import checkpoint_path, load_checkpoint
from models.training.stream import step_generator

SEED = 0
PER_REPLICA = 8


class LinearTask:
    """Least squares on a linear map; with ``replicas_in_one`` = n one process reads the batches of
    all n replicas of a data-parallel run, concatenated."""

    stage = "linear"

    def __init__(self, replicas_in_one: int = 1) -> None:
        torch.manual_seed(0)
        self.module = nn.Linear(4, 2)
        self.target = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
        self.replicas_in_one = replicas_in_one
        self.batch_size = PER_REPLICA * replicas_in_one

    def batch(self, step: int, generator: torch.Generator) -> torch.Tensor:
        if self.replicas_in_one == 1:
            return torch.randn(PER_REPLICA, 4, generator=generator)
        seeds = [Replica(r, self.replicas_in_one).data_seed(SEED) for r in range(self.replicas_in_one)]
        return torch.cat(
            [torch.randn(PER_REPLICA, 4, generator=step_generator(s, self.stage, step)) for s in seeds]
        )

    def loss(self, batch: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        return ((self.module(batch) - batch @ self.target) ** 2).mean(), {}

    def after_step(self) -> None:
        pass


def recipe(steps: int, batch_size: int) -> TrainConfig:
    return TrainConfig(
        batch_size=batch_size, steps=steps, lr=5e-2, warmup_steps=2, ema_decay=0.9, log_every=5, seed=SEED
    )


def train_linear(replica: Replica, out_dir: Path, steps: int) -> TrainResult:
    """One replica's run; every replica leaves its final weights in ``out_dir`` to compare."""
    trainer = Trainer(LinearTask(), recipe(steps, PER_REPLICA), out_dir, show_progress=False, replica=replica)
    result = trainer.run()
    torch.save(trainer.module.state_dict(), out_dir / f"replica{replica.rank}.pt")
    return result


@pytest.mark.slow  # replica processes
def test_two_replicas_train_like_one_process_on_both_batches(tmp_path: Path) -> None:
    result = run_replicas(train_linear, 2, tmp_path / "replicas", 12)
    assert result.steps == 12 and result.examples == 12 * 2 * PER_REPLICA

    first = torch.load(tmp_path / "replicas" / "replica0.pt")
    second = torch.load(tmp_path / "replicas" / "replica1.pt")
    for name, value in first.items():
        assert torch.equal(value, second[name]), name  # the same averaged step on both

    # The mean of the replicas' gradients is the gradient over both batches together.
    together = Trainer(
        LinearTask(replicas_in_one=2), recipe(12, 2 * PER_REPLICA), tmp_path / "one", show_progress=False
    )
    together.run()
    for name, value in together.module.state_dict().items():
        torch.testing.assert_close(first[name], value, rtol=1e-5, atol=1e-6)

    # Replica 1 read other data than replica 0: one replica alone ends elsewhere.
    alone = Trainer(LinearTask(), recipe(12, PER_REPLICA), tmp_path / "alone", show_progress=False)
    alone.run()
    assert not torch.allclose(alone.module.weight, first["weight"], atol=1e-4)

    state = load_checkpoint(checkpoint_path(tmp_path / "replicas", "linear"))
    assert state is not None and state["step"] == 12 and state["examples"] == 12 * 2 * PER_REPLICA
    assert (tmp_path / "replicas" / "logs" / "linear.jsonl").read_text().count("\n") == 12 // 5 + 1


@pytest.mark.slow  # replica processes
def test_replicas_resume_a_one_process_checkpoint(tmp_path: Path) -> None:
    """Replica 0 reads the one-process stream, so a run can go on with more cores."""
    Trainer(LinearTask(), recipe(4, PER_REPLICA), tmp_path, show_progress=False).run()
    result = run_replicas(train_linear, 2, tmp_path, 8)
    assert result.steps == 8 and result.examples == 4 * PER_REPLICA + 4 * 2 * PER_REPLICA


def average_of_ranks(replica: Replica) -> list[list[float]]:
    """Replica r's gradients are r + 1 (the bias gets none on replica 0); returns the average."""
    module = nn.Linear(2, 1)
    module.weight.grad = torch.full_like(module.weight, replica.rank + 1.0)
    if replica.rank == 1:
        module.bias.grad = torch.full_like(module.bias, 4.0)
    replica.average_gradients(module)
    return [module.weight.grad.flatten().tolist(), module.bias.grad.flatten().tolist()]


@pytest.mark.slow  # replica processes
def test_average_gradients_is_the_mean_over_replicas() -> None:
    assert run_replicas(average_of_ranks, 2) == [[1.5, 1.5], [2.0]]


def failing_replica(replica: Replica) -> None:
    if replica.rank == 1:
        raise RuntimeError("replica 1 fails")
    torch.distributed.barrier()  # replica 0 would wait here for ever


@pytest.mark.slow  # replica processes
def test_a_failing_replica_stops_the_others() -> None:
    with pytest.raises(RuntimeError, match="replicas failed"):
        run_replicas(failing_replica, 2)


def test_replica_rejects_impossible_ranks() -> None:
    assert Replica().data_seed(7) == 7 and Replica(0, 2).data_seed(7) == 7
    assert Replica(1, 2).data_seed(7) != 7
    with pytest.raises(ValueError):
        Replica(2, 2)
    with pytest.raises(ValueError):
        run_replicas(train_linear, 1)
