"""What a running batch tells Redis while it samples, and what it asks: progress out, cancels in.

Both are called by the pipeline on every denoising step, so both are rate-limited: progress is
written to every member's ``meta`` at most ``1 / min_interval_s`` times a second per batch (plus
once at the end); cancel flags and ownership are read at most as often. Live previews ride on the
progress writes: each write also asks which jobs someone streams with previews (one EXISTS per
job in the same round trip), and only those get a preview, at most as often.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job

from contract.jobs import dump_meta
from contract.keys import Keys
from workers.leases import Ownership
from workers.previews import preview_png, preview_record

if TYPE_CHECKING:
    import torch

log = logging.getLogger("unclip.worker")

Clock = Callable[[], float]


PREVIEW_TTL_S = 60


class ProgressWriter:
    """``progress(stage, step, total)`` → ``meta.progress`` of every job in the batch, with
    ``fraction`` = diffusion steps done over the whole chain's steps (monotonic).

    With ``keys``, :meth:`preview` writes a job's x̂_0 as a PNG strip to ``keys.preview(id)``
    while ``keys.listening(id)`` exists; ``rows`` are each job's rows of the batch, in order.
    """

    def __init__(
        self,
        connection: Redis,
        jobs: Sequence[Job],
        steps: dict[str, int],
        *,
        min_interval_s: float = 0.25,
        clock: Clock = time.monotonic,
        keys: Keys | None = None,
        rows: Sequence[range] | None = None,
    ):
        self.connection = connection
        self.keys = keys
        self.jobs: list[Job] = []
        self.rows: list[range] = []
        self.listening: set[int] = set()  # indices of jobs someone streams with previews
        self.follow(jobs, rows)
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
        self._last_preview = float("-inf")
        self._fraction = 0.0
        self._progress: dict[str, Any] = {}
        self.writes = 0
        self.previews = 0

    def follow(self, jobs: Sequence[Job], rows: Sequence[range] | None = None) -> None:
        """Write for ``jobs`` (the batch's members that go on), whose rows are ``rows``."""
        self.jobs = list(jobs)
        self.rows = list(rows or [])
        self.listening = set()  # asked again at the next write

    def __call__(self, stage: str, step: int, total: int) -> None:
        before = self.before.get(stage)  # None for "clip" (no steps of its own)
        if before is not None:
            fraction = (before + min(step, total)) / self.total
            self._fraction = max(self._fraction, min(1.0, fraction))
        progress = {"stage": stage, "step": step, "total": total, "fraction": round(self._fraction, 4)}
        self._progress = progress
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
                if self.keys is not None:
                    for job in self.jobs:
                        pipe.exists(self.keys.listening(job.id))
                answers = pipe.execute()
        except RedisError as exc:
            log.warning("progress write failed: %s", exc)
            return
        self.writes += 1
        if self.keys is not None:
            self.listening = {i for i, flag in enumerate(answers[len(self.jobs) :]) if flag}

    def preview(self, stage: str, pred_xstart: torch.Tensor) -> None:
        """The pipeline's preview hook (every step): x̂_0 [N x 3 x H x W] of the listened-to jobs,
        at most once per ``min_interval_s``. Returns at once when nobody listens, for the prior's
        embeddings, and once rows were dropped (a member canceled: the rows no longer line up)."""
        if not self.listening or self.keys is None or pred_xstart.ndim != 4 or not self.rows:
            return
        if pred_xstart.shape[0] != self.rows[-1].stop:
            return
        now = self.clock()
        if now - self._last_preview < self.min_interval_s:
            return
        self._last_preview = now
        self.previews += 1
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                for i in sorted(self.listening):
                    png = preview_png(pred_xstart, self.rows[i])
                    record = preview_record(png, self._progress, self.previews)
                    pipe.set(self.keys.preview(self.jobs[i].id), record, ex=PREVIEW_TTL_S)
                pipe.execute()
        except RedisError as exc:
            log.warning("preview write failed: %s", exc)


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
