"""Data-parallel training on one machine: N replica processes that average their gradients.

On a small CPU the networks of the ``tiny`` recipe cannot use a second core inside one process:
two intra-op threads train the decoder no faster than one (``models/training/RECIPE.md``, sections
1 and 8), because its convolutions are too small to split. Two one-thread processes that each
take their own batch and average gradients before every optimizer step (what PyTorch's
``DistributedDataParallel`` does, here with the ``gloo`` backend over the loopback interface)
train on twice the examples per second. Every replica applies the same averaged gradient with the
same learning rate, so the weights stay identical on all of them; replica 0 alone writes
checkpoints, logs and the exported weights.

Each replica reads its own data: replica 0 the stream a one-process run with the same seed reads
(so a run can go on from a one-process checkpoint), replica ``r`` a stream from a seed derived
from ``(seed, "replica", r)``.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import structlog
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from models.training.stream import derive_seed

log = structlog.get_logger("models.training")

# What the loop agrees on before every step (see :meth:`Replica.agree`).
CONTINUE, DONE, INTERRUPTED = 0, 1, 2


@dataclass(frozen=True)
class Replica:
    """This process's place among the replicas (``Replica()`` is a plain one-process run)."""

    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"replica {self.rank} of {self.world} does not exist")

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def leader(self) -> bool:
        """The replica that saves checkpoints, logs, evaluates and exports."""
        return self.rank == 0

    def data_seed(self, seed: int) -> int:
        """The seed of this replica's data stream and per-step randomness."""
        return seed if self.rank == 0 else derive_seed(seed, "replica", self.rank)

    def average_gradients(self, module: nn.Module) -> None:
        """Replace every parameter's gradient by its mean over the replicas (one all-reduce).

        A parameter without a gradient counts as a zero gradient, so every replica reduces the
        same flat buffer whatever its batch touched.
        """
        if not self.distributed:
            return
        params = [p for p in module.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])  # [P]
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world
        offset = 0
        for param in params:
            count = param.numel()
            param.grad = flat[offset : offset + count].view_as(param).clone()
            offset += count

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy replica 0's parameters and buffers to every replica."""
        if not self.distributed:
            return
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)

    def agree(self, state: int, elapsed: float) -> tuple[int, float]:
        """Agree on whether to go on and on the training time so far, before a step.

        ``state`` is :data:`CONTINUE`, :data:`DONE` or :data:`INTERRUPTED`; the most final state
        of any replica wins, so all stop at the same step. The elapsed time is the largest of
        the replicas', so that a time-bounded learning-rate schedule is the same on all of them.
        """
        if not self.distributed:
            return state, elapsed
        agreed = torch.tensor([float(state), elapsed], dtype=torch.float64)
        dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
        return int(agreed[0]), float(agreed[1])


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def process_group(replica: Replica, port: int) -> Iterator[None]:
    """Join the replicas' ``gloo`` group on ``127.0.0.1:port`` for the duration of the block."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=replica.rank, world_size=replica.world
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def _replica_main(
    rank: int,
    world: int,
    port: int,
    threads: int,
    results: Any,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
) -> None:
    torch.set_num_threads(threads)
    replica = Replica(rank, world)
    with process_group(replica, port):
        result = fn(replica, *args)
    if replica.leader:
        results.put(result)


def run_replicas(fn: Callable[..., Any], world: int, *args: Any, threads: int = 1) -> Any:
    """Run ``fn(replica, *args)`` in ``world`` processes joined in one process group.

    Returns what replica 0's ``fn`` returned. SIGINT / SIGTERM to this process are passed on to
    the replicas (the training loop then stops them all at the same step, with a checkpoint).
    ``fn`` and ``args`` must be picklable (processes are spawned, not forked: torch's thread
    pools do not survive a fork).
    """
    if world < 2:
        raise ValueError("run_replicas needs at least two replicas")
    spawn = mp.get_context("spawn")
    results = spawn.SimpleQueue()
    port = free_port()
    processes = [
        spawn.Process(target=_replica_main, args=(rank, world, port, threads, results, fn, args))
        for rank in range(world)
    ]
    for process in processes:
        process.start()
    log.info("replicas started", replicas=world, threads_each=threads, pids=[p.pid for p in processes])

    def forward(signum: int, frame: Any) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(p.is_alive() for p in processes):
            processes[0].join(timeout=1.0)
            if any(p.exitcode not in (None, 0) for p in processes):
                # A replica died: the others would wait for it in the next all-reduce forever.
                for process in processes:
                    if process.is_alive():
                        process.terminate()
                for process in processes:
                    process.join()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    failed = {rank: p.exitcode for rank, p in enumerate(processes) if p.exitcode != 0}
    if failed:
        raise RuntimeError(f"training replicas failed (rank: exit code): {failed}")
    return results.get()
