"""Several workers on one host with default settings: each takes a numbered slot (a lock file),
which tells it how many workers share the host's cores. (Metrics ports: each worker takes
``UNCLIP_WORKER_METRICS_PORT`` or, when another has it, the next free port above it;
``workers.main.serve_metrics``.)

A slot is an exclusive ``flock`` on ``<UNCLIP_WORKER_SLOTS_DIR>/slot-<k>.lock``; the kernel drops
it when the process dies (kill -9 included), so a slot never outlives its worker. The number of
live workers is the number of locked slot files. Threads: ``UNCLIP_WORKER_THREADS``, or, when 0,
the host's cores divided by its live workers (re-checked before every batch, so the first of two
workers started gives up half its threads when the second arrives). Two CPU workers that each
use every core run several times slower than with their share each (oversubscription).
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import IO

log = logging.getLogger("unclip.worker")
MAX_SLOTS = 64


class HostSlot:
    """This process's slot among the workers on this host."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.index = -1
        self._handle: IO[bytes] | None = None

    def claim(self) -> int:
        """Take the lowest free slot; returns its number."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for index in range(MAX_SLOTS):
            handle = (self.directory / f"slot-{index}.lock").open("ab")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            self.index, self._handle = index, handle
            return index
        raise RuntimeError(f"more than {MAX_SLOTS} workers on this host ({self.directory})")

    def live_workers(self) -> int:
        """Workers on this host now (slots whose lock is held, this one included)."""
        count = 0
        for path in self.directory.glob("slot-*.lock"):
            try:
                with path.open("ab") as probe:
                    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                count += 1
        return max(count, 1)

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def host_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_share(configured: int, live_workers: int, cores: int | None = None) -> int | None:
    """Torch threads for one worker: ``configured`` when set, None when ``OMP_NUM_THREADS`` is
    (the operator chose), else the cores divided among the live workers (at least one)."""
    if configured > 0:
        return configured
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, (cores or host_cores()) // max(1, live_workers))
