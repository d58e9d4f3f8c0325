"""A small, generic training loop: AdamW, warmup, EMA, clipping, checkpoints, resume.

A stage plugs in as a :class:`TrainTask`: a module to train, ``batch(step, generator)`` and
``loss(batch, generator)``. The loop owns everything else: the optimizer (AdamW, weight decay on
matrices only), a linear warmup then cosine decay of the learning rate, the EMA of the weights
(:mod:`models.training.ema`), gradient-norm clipping, a tqdm bar with the smoothed loss and the
throughput, a structured log line every ``log_every`` steps (also appended to
``<out>/logs/<stage>.jsonl``), and periodic atomic checkpoints of the full training state
(:mod:`models.training.state`).

Determinism: step ``k`` draws its data and its randomness (timesteps, noise, condition dropping,
crops) from generators seeded by ``(seed, stage, k)`` alone, and the global torch RNG is
re-seeded the same way each step (for dropout inside the networks). So a run interrupted and
restarted with the same command continues bit-for-bit like an uninterrupted one (on the same
machine and thread count). A ``--minutes`` budget counts training time across restarts; its
learning-rate schedule follows the fraction of the budget spent, so only step-bounded runs are
exactly reproducible.

Data-parallel replicas (:mod:`models.training.replicas`) run this same loop in several processes:
each reads its own stream, their gradients are averaged before the optimizer step, and they agree
before every step on stopping and on the time spent, so all take the same steps.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog
import torch
from torch import nn
from tqdm.auto import tqdm

from models.training.config import TrainConfig
from models.training.ema import EMA
from models.training.replicas import CONTINUE, DONE, INTERRUPTED, Replica
from models.training.state import (
    atomic_torch_save,
    checkpoint_path,
    load_checkpoint,
    rng_states,
    set_rng_states,
)
from models.training.stream import derive_seed, step_generator

log = structlog.get_logger("models.training")

FINAL_LR_FRACTION = 0.1  # cosine decay ends at this fraction of the peak learning rate


class TrainTask(Protocol):
    """One stage's data and objective (see :mod:`models.training.stages`)."""

    module: nn.Module
    batch_size: int

    @property
    def stage(self) -> str:
        """The name that keys the task's checkpoints, logs and random streams (read only)."""
        ...

    def batch(self, step: int, generator: torch.Generator) -> Any: ...

    def loss(self, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]: ...

    def after_step(self) -> None: ...


@dataclass
class TrainResult:
    stage: str
    steps: int
    examples: int
    seconds: float
    final_loss: float | None
    interrupted: bool = False
    metrics: dict[str, float] = field(default_factory=dict)

    def as_notes(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("interrupted",)}


class _Smoother:
    """Bias-corrected exponential moving average of a scalar (the bar's loss)."""

    def __init__(self, beta: float = 0.98):
        self.beta, self.value, self.count = beta, 0.0, 0

    def add(self, x: float) -> float:
        self.count += 1
        self.value = self.beta * self.value + (1 - self.beta) * x
        return self.value / (1 - self.beta**self.count)


def build_optimizer(module: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices and kernels only (not biases, norms, scales)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in module.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def learning_rate(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay to ``FINAL_LR_FRACTION`` of the peak
    over the budget (``progress`` in [0, 1]: the fraction of steps or minutes spent)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    return cfg.lr * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * cosine)


class Trainer:
    """Runs one task to its budget, checkpointing to ``<out>/checkpoints/<stage>.pt``."""

    def __init__(
        self,
        task: TrainTask,
        cfg: TrainConfig,
        out_dir: str | Path,
        *,
        device: str | torch.device = "cpu",
        show_progress: bool = True,
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
        replica: Replica | None = None,
    ):
        if cfg.steps is None and cfg.minutes is None:
            raise ValueError("give a budget: steps, minutes or both")
        self.task, self.cfg = task, cfg
        self.out_dir = Path(out_dir)
        self.device = torch.device(device)
        # Data-parallel replicas (models.training.replicas): only the leader shows progress,
        # logs, evaluates and saves; all of them train.
        self.replica = replica or Replica()
        self.show_progress = show_progress and self.replica.leader
        self.evaluate = evaluate if self.replica.leader else None
        self.data_seed = self.replica.data_seed(cfg.seed)
        self.module = task.module.to(self.device)
        self.optimizer = build_optimizer(self.module, cfg)
        self.ema = EMA(self.module, cfg.ema_decay).to(self.device)
        self.step = 0
        self.examples = 0
        self.elapsed = 0.0  # training seconds, across restarts
        self.path = checkpoint_path(self.out_dir, task.stage)
        self._stop = threading.Event()

    # -- budget ---------------------------------------------------------------------------------
    def progress(self) -> float:
        fractions = []
        if self.cfg.steps:
            fractions.append(self.step / self.cfg.steps)
        if self.cfg.minutes:
            fractions.append(self.elapsed / (60 * self.cfg.minutes))
        return max(fractions) if fractions else 0.0

    def done(self) -> bool:
        return self.progress() >= 1.0

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "stage": self.task.stage,
            "step": self.step,  # also the data-stream position: step k reads batch k
            "examples": self.examples,
            "elapsed_seconds": self.elapsed,
            "module": self.module.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "train_config": asdict(self.cfg),
            "rng": rng_states(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["stage"] != self.task.stage:
            raise ValueError(f"checkpoint is for stage {state['stage']!r}, not {self.task.stage!r}")
        saved = state["train_config"]
        for key in ("batch_size", "seed", "block_batches"):
            if saved.get(key) != getattr(self.cfg, key):
                raise ValueError(
                    f"{self.path}: saved with {key}={saved.get(key)}, now {getattr(self.cfg, key)}; "
                    "resume with the same settings, or use a new --out"
                )
        self.module.load_state_dict(state["module"])
        self.ema.load_state_dict(state["ema"])
        self.ema.to(self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.examples = int(state["step"]), int(state["examples"])
        self.elapsed = float(state["elapsed_seconds"])
        set_rng_states(state["rng"])

    def save(self) -> None:
        if self.replica.leader:
            atomic_torch_save(self.state_dict(), self.path)

    def resume(self) -> bool:
        state = load_checkpoint(self.path)
        if state is None:
            return False
        self.load_state_dict(state)
        if self.replica.leader:
            log.info("resumed", stage=self.task.stage, step=self.step, elapsed_s=round(self.elapsed, 1))
        return True

    # -- the loop -------------------------------------------------------------------------------
    def train_step(self) -> tuple[float, dict[str, float]]:
        """One optimizer step on batch ``self.step``; returns the loss and the task's metrics."""
        cfg, stage = self.cfg, self.task.stage
        torch.manual_seed(derive_seed(self.data_seed, stage, "global", self.step))
        generator = step_generator(self.data_seed, stage, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, self.step, self.progress())
        self.module.train()
        batch = self.task.batch(self.step, generator)
        device_type = torch.device(self.device).type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.bf16):
            loss, metrics = self.task.loss(batch, generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.replica.average_gradients(self.module)
        if cfg.grad_clip:
            metrics["grad_norm"] = float(
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.grad_clip)
            )
        self.optimizer.step()
        self.task.after_step()
        self.ema.update(self.module)
        self.step += 1
        self.examples += self.task.batch_size * self.replica.world
        return float(loss.detach()), metrics

    def run(self) -> TrainResult:
        """Train until the budget is spent (or SIGINT / SIGTERM), checkpointing on the way and at the end."""
        self.resume()
        self.replica.broadcast_module(self.module)  # identical starts, however each got its weights
        smoother, last_loss = _Smoother(), None
        window_start, window_examples = time.perf_counter(), 0
        last_save_step, last_save_time = self.step, time.perf_counter()
        bar = tqdm(
            total=self.cfg.steps,
            initial=self.step,
            desc=f"train {self.task.stage}",
            unit="step",
            disable=not self.show_progress,
            dynamic_ncols=True,
        )
        interrupted = False
        with self._signals_stop(), bar:
            while True:
                wanted = INTERRUPTED if self._stop.is_set() else DONE if self.done() else CONTINUE
                state, self.elapsed = self.replica.agree(wanted, self.elapsed)
                if state != CONTINUE:
                    interrupted = state == INTERRUPTED
                    break
                started = time.perf_counter()
                loss, metrics = self.train_step()
                self.elapsed += time.perf_counter() - started
                last_loss = loss
                smooth = smoother.add(loss)
                window_examples += self.task.batch_size * self.replica.world
                rate = window_examples / max(1e-9, time.perf_counter() - window_start)
                bar.update(1)
                bar.set_postfix(loss=f"{smooth:.4f}", ex_s=f"{rate:.1f}", refresh=False)
                if self.step % self.cfg.log_every == 0 or self.done():
                    self._log(loss, smooth, rate, metrics)
                    window_start, window_examples = time.perf_counter(), 0
                if self.cfg.eval_every and self.step % self.cfg.eval_every == 0 and not self.done():
                    self._evaluate()
                since_save = time.perf_counter() - last_save_time
                if (
                    self.step - last_save_step >= self.cfg.checkpoint_every
                    or since_save >= 60 * self.cfg.checkpoint_minutes
                ):
                    self.save()
                    last_save_step, last_save_time = self.step, time.perf_counter()
        if self.step != last_save_step or not self.path.exists():
            self.save()  # the leader's; the others' weights are the same
        metrics_out = self._evaluate()
        return TrainResult(
            stage=self.task.stage,
            steps=self.step,
            examples=self.examples,
            seconds=round(self.elapsed, 1),
            final_loss=last_loss,
            interrupted=interrupted,
            metrics=metrics_out,
        )

    def averaged_state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA weights, as the module's state dict (what gets exported)."""
        return self.ema.averaged_state_dict(self.module)

    def _evaluate(self) -> dict[str, float]:
        """The task's held-batch metrics of the EMA weights (logged; empty without ``evaluate``)."""
        if self.evaluate is None:
            return {}
        live = {k: v.clone() for k, v in self.module.state_dict().items()}
        self.ema.copy_to(self.module)
        self.module.eval()
        try:
            with torch.no_grad():
                metrics = self.evaluate(self.module)
        finally:
            self.module.load_state_dict(live)
        log.info("evaluated", stage=self.task.stage, step=self.step, **metrics)
        self._append_log(
            {"stage": self.task.stage, "step": self.step, "elapsed_s": round(self.elapsed, 1), **metrics}
        )
        return metrics

    def _log(self, loss: float, smooth: float, rate: float, metrics: dict[str, float]) -> None:
        if not self.replica.leader:
            return
        record = {
            "stage": self.task.stage,
            "step": self.step,
            "loss": round(loss, 5),
            "loss_smooth": round(smooth, 5),
            "examples_per_s": round(rate, 2),
            "lr": self.optimizer.param_groups[0]["lr"],
            "elapsed_s": round(self.elapsed, 1),
            **{k: round(v, 5) for k, v in metrics.items()},
        }
        log.info("train", **{k: v for k, v in record.items() if k != "stage"}, stage=self.task.stage)
        self._append_log(record)

    def _append_log(self, record: dict[str, Any]) -> None:
        log_file = self.out_dir / "logs" / f"{self.task.stage}.jsonl"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("a") as handle:
            handle.write(json.dumps({"time": time.time(), **record}) + "\n")

    @contextmanager
    def _signals_stop(self) -> Iterator[None]:
        """SIGINT / SIGTERM end the run after the current step, with a checkpoint."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            log.warning("stopping after this step", signal=signum, stage=self.task.stage)
            self._stop.set()

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
