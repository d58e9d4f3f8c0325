"""What a running batch tells Redis while it samples, and what it asks: progress out, cancels in.

Both are called by the pipeline on every denoising step, so both are rate-limited: progress is
written to every member's ``meta`` at most ``1 / min_interval_s`` times a second per batch (plus
once at the end); cancel flags and ownership are read at most as often.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job

from contract.jobs import dump_meta
from contract.keys import Keys
from workers.leases import Ownership

log = logging.getLogger("unclip.worker")

Clock = Callable[[], float]


class ProgressWriter:
    """``progress(stage, step, total)`` → ``meta.progress`` of every job in the batch, with
    ``fraction`` = diffusion steps done over the whole chain's steps (monotonic)."""

    def __init__(
        self,
        connection: Redis,
        jobs: Sequence[Job],
        steps: dict[str, int],
        *,
        min_interval_s: float = 0.25,
        clock: Clock = time.monotonic,
    ):
        self.connection = connection
        self.jobs = list(jobs)
        # Per diffusion stage, in chain order: the steps of the stages before it.
        self.before: dict[str, int] = {}
        done = 0
        for stage, count in steps.items():
            self.before[stage] = done
            done += count
        self.total = done or 1
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._last_write = float("-inf")
        self._fraction = 0.0
        self.writes = 0

    def __call__(self, stage: str, step: int, total: int) -> None:
        before = self.before.get(stage)  # None for "clip" (no steps of its own)
        if before is not None:
            fraction = (before + min(step, total)) / self.total
            self._fraction = max(self._fraction, min(1.0, fraction))
        progress = {"stage": stage, "step": step, "total": total, "fraction": round(self._fraction, 4)}
        for job in self.jobs:
            job.meta["progress"] = progress
        now = self.clock()
        if now - self._last_write >= self.min_interval_s:
            self._last_write = now
            self.flush()

    def flush(self) -> None:
        """Best effort: a Redis hiccup costs a progress update, never the batch."""
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                for job in self.jobs:
                    pipe.hset(job.key, "meta", dump_meta(job.meta))
                pipe.execute()
        except RedisError as exc:
            log.warning("progress write failed: %s", exc)
            return
        self.writes += 1


class CancelWatch:
    """``canceled()`` → indices of batch members that were canceled or are no longer ours."""

    def __init__(
        self,
        connection: Redis,
        keys: Keys,
        ownership: Ownership,
        job_ids: Sequence[str],
        *,
        min_interval_s: float = 0.25,
        clock: Clock = time.monotonic,
    ):
        self.connection = connection
        self.keys = keys
        self.ownership = ownership
        self.job_ids = list(job_ids)
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._last_check = float("-inf")
        self.dropped: set[int] = set()
        self.lost: set[int] = set()

    def __call__(self) -> set[int]:
        now = self.clock()
        if now - self._last_check >= self.min_interval_s:
            self._last_check = now
            self.refresh()
        return self.dropped | self.lost

    def refresh(self) -> None:
        """Best effort: while Redis does not answer, the last answer stands."""
        try:
            flags = self.connection.mget([self.keys.cancel(job_id) for job_id in self.job_ids])
            held = self.ownership.holds(self.job_ids)
        except RedisError as exc:
            log.warning("cancel check failed: %s", exc)
            return
        self.dropped |= {i for i, flag in enumerate(flags) if flag is not None}
        self.lost |= {i for i, ours in enumerate(held) if not ours}
