"""Recovery of a dead worker's jobs, runnable by any process that reaches Redis.

Every worker keeps a lease (``workers.leases.Lease``) and an owned set of the jobs it runs. A
listed worker without a lease is dead: :meth:`Reaper.run_once` puts its unfinished jobs back at
the front of the queue (at most ``max_worker_lost_retries`` times each, then fails them with
``worker_lost``) and rescues jobs stranded between rq's dequeue and a worker's claim.

Workers run it every half lease; so does the API (``UNCLIP_REAPER_INTERVAL_S``), so that the jobs
of the only worker are requeued even while no worker is alive. Several reapers at once are safe:
each dead worker is taken by one of them (``SET NX``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from redis.exceptions import RedisError
from rq.job import Job
from rq.job import JobStatus as RqStatus
from rq.job_lifecycle import record_job_failure
from rq.serializers import JSONSerializer
from rq.worker import BaseWorker

from contract.connection import as_text
from contract.jobs import JobStore, dump_meta
from contract.schemas import JobStatus

log = logging.getLogger("unclip.reaper")


class Reaper:
    """Finds dead workers and recovers their jobs (safe to run in every worker at once)."""

    def __init__(self, store: JobStore, worker_name: str | None = None):
        self.store = store
        self.connection = store.connection
        self.settings = store.settings
        self.keys = store.keys
        self.queue = store.queue
        self.worker_name = worker_name

    def run_once(self) -> list[str]:
        """Reap every dead worker and rescue jobs stranded between dequeue and claim."""
        reaped = [name for name in self._dead_workers() if self.reap(name)]
        self._rescue_stranded()
        return reaped

    def _dead_workers(self) -> list[str]:
        names = sorted(as_text(n) for n in self.connection.smembers(self.keys.leases))
        names = [n for n in names if n != self.worker_name]
        if not names:
            return []
        with self.connection.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(self.keys.lease(name))
            alive = pipe.execute()
        return [name for name, ok in zip(names, alive, strict=True) if not ok]

    def reap(self, name: str, count_attempt: bool = True) -> bool:
        """Recover worker ``name``'s unfinished jobs and forget it; False if another process is at it.

        ``count_attempt=False`` (a worker handing back its own jobs as it stops) requeues started
        jobs without counting an attempt: no worker was lost."""
        if not self.connection.set(self.keys.reaping(name), 1, nx=True, ex=60):
            return False  # another process is reaping it
        job_ids = sorted(as_text(j) for j in self.connection.smembers(self.keys.owned(name)))
        if job_ids:
            log.warning("worker %s is gone; recovering %d job(s)", name, len(job_ids))
        for job_id in job_ids:
            try:
                self._recover(job_id, name, count_attempt)
            except Exception:
                log.exception("could not recover job %s of dead worker %s", job_id, name)
        self._requeue_webhooks(name)
        self._unregister_rq_worker(name)
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.delete(self.keys.owned(name))
            pipe.srem(self.keys.leases, name)
            pipe.execute()
        return True

    def _recover(self, job_id: str, dead_worker: str, count_attempt: bool = True) -> None:
        job = self._fetch(job_id)
        if job is None:
            return
        status = job.get_status()
        if status not in (RqStatus.STARTED, RqStatus.QUEUED):
            return  # already final (it died after recording the outcome)
        started = status is RqStatus.STARTED
        attempts = int(job.meta.get("attempts", 0)) + (1 if started and count_attempt else 0)
        job.meta.update(attempts=attempts, progress=None)
        with self.connection.pipeline() as pipe:
            for execution in job.get_executions():
                execution.delete(job, pipe)
            pipe.lrem(self.queue.intermediate_queue_key, 0, job.id)
            if self.connection.exists(self.keys.cancel(job.id)):
                outcome = JobStatus.CANCELED
            elif attempts <= self.settings.max_worker_lost_retries:
                outcome = JobStatus.QUEUED
                job.set_status(RqStatus.QUEUED, pipeline=pipe)
                self.queue.push_job_id(job.id, pipeline=pipe, at_front=True)
            else:
                outcome = JobStatus.FAILED
            pipe.hset(job.key, "meta", dump_meta(job.meta))
            pipe.execute()
        log.warning("job %s of dead worker %s: %s (attempt %d)", job.id, dead_worker, outcome.value, attempts)
        if outcome is JobStatus.CANCELED:
            self.store.record_final(job, outcome)
        elif outcome is JobStatus.FAILED:
            message = f"the worker running this job died {attempts} times (last: {dead_worker})"
            self.store.record_final(
                job, outcome, error=("worker_lost", message), transition=lambda: _fail(job, message)
            )

    def _rescue_stranded(self) -> None:
        """A job rq moved to the intermediate list whose worker died before claiming it (a
        window of a few milliseconds) is owned by nobody: after one lease period, requeue it."""
        stranded = [as_text(j) for j in self.connection.lrange(self.queue.intermediate_queue_key, 0, -1)]
        if not stranded:
            return
        owners = [self.keys.owned(as_text(n)) for n in self.connection.smembers(self.keys.leases)]
        owned = {as_text(j) for j in self.connection.sunion(owners)} if owners else set()
        for job_id in stranded:
            if job_id in owned:
                continue
            seen = self.keys.intermediate_seen(job_id)
            if self.connection.set(seen, time.time(), nx=True, ex=10 * self.settings.lease_ttl_s):
                continue
            first_seen = float(self.connection.get(seen) or time.time())
            job = self._fetch(job_id)
            if time.time() - first_seen < self.settings.lease_ttl_s or job is None:
                continue
            if job.get_status() is RqStatus.QUEUED and self.connection.lrem(
                self.queue.intermediate_queue_key, 1, job_id
            ):
                log.warning("job %s was stranded between dequeue and claim; requeued", job_id)
                self.queue.push_job_id(job_id, at_front=True)
            self.connection.delete(seen)

    def _requeue_webhooks(self, name: str) -> None:
        while self.connection.lmove(self.keys.webhooks_inflight(name), self.keys.webhooks, "RIGHT", "LEFT"):
            pass

    def _unregister_rq_worker(self, name: str) -> None:
        """So ``rq info`` stops listing the dead worker (rq would keep it for its TTL, minutes)."""
        worker = BaseWorker.find_by_key(
            BaseWorker.redis_worker_namespace_prefix + name,
            connection=self.connection,
            serializer=JSONSerializer,
        )
        if worker is not None:
            worker.register_death()  # type: ignore[no-untyped-call]

    def _fetch(self, job_id: str) -> Job | None:
        try:
            return Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
        except Exception:
            return None


class PeriodicThread(threading.Thread):
    """Calls ``action`` every ``interval_s`` until stopped; an exception is logged, not fatal."""

    def __init__(self, name: str, interval_s: float, action: Callable[[], object], stop: threading.Event):
        super().__init__(name=name, daemon=True)
        self.interval_s = interval_s
        self.action = action
        self.stop_event = stop

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.action()
            except RedisError as exc:  # Redis restarting: one line a pass, not a traceback
                log.warning("%s: Redis unreachable (%s)", self.name, exc)
            except Exception:
                log.exception("%s failed", self.name)
            self.stop_event.wait(self.interval_s)


def _fail(job: Job, message: str) -> None:
    """rq's worker-less failure path (FailedJobRegistry and a failure result)."""
    with job.connection.pipeline() as pipe:
        record_job_failure(job, f"worker_lost: {message}", pipe)
        pipe.execute()
