"""The rq worker that samples compatible jobs together, in-process, on a resident model.

:class:`BatchingWorker` subclasses rq's ``BaseWorker`` and overrides only ``execute_job``, the
template-method hook rq calls with each dequeued job. Like ``SimpleWorker`` it never forks
(CUDA and a resident model forbid it). For the job rq hands it, it:

1. claims the compatible jobs queued behind it (``workers.batching``) and, once it has company,
   more for up to ``max_wait_ms``, moving each atomically out of the queue into its owned set
   (``workers.leases.Ownership``);
2. starts every member through rq's own bookkeeping (``prepare_execution`` and
   ``prepare_job_execution``: StartedJobRegistry, status ``started``);
3. samples them as one batch (``workers.runtime``), writing progress and watching for cancels;
4. ends each member through ``JobStore.record_final`` (the one function that records a job's
   end: timestamps, the "final" claim, the metric, the webhook), handing it rq's own transition:
   ``_finalize_success`` (result, FinishedJobRegistry), ``_finalize_failure`` (exception,
   FailedJobRegistry) or ``job.cancel()`` (CanceledJobRegistry). So ``rq info`` and the
   registries tell the truth. Those two rq methods are private: pyproject.toml pins the rq
   releases that have them and tests/workers/test_rq_contract.py checks their signatures.

A SIGTERM during a batch is rq's warm shutdown: the batch finishes, then the worker exits; past
``shutdown_grace_s`` the batch stops and its jobs go back to the queue. A batch that raises is
sampled again in halves (out of memory: at half size; other errors: so the job that raises fails
alone).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

import numpy as np
from rq.executions import Execution
from rq.job import Job
from rq.job import JobStatus as RqStatus
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException
from rq.worker import BaseWorker, WorkerStatus

from contract.jobs import JobStore, dump_meta
from contract.metrics import WorkerMetrics
from contract.schemas import JobStatus
from contract.settings import Settings
from contract.storage import ImageStorage, encode_png
from contract.tasks import GenerationTask
from models.configs import SamplingConfig
from models.pipeline import GenerationRequest, stages_for_size
from workers.batching import Batch, BatchKey, BatchLimits, Candidate
from workers.job_requests import JobRequests, job_requests
from workers.leases import Ownership
from workers.progress import CancelWatch, ProgressWriter
from workers.runtime import Runtime, RuntimeState
from workers.tasks import sampling_for

log = logging.getLogger("unclip.worker")

ExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
_POLL_S = 0.01  # how often the batch window looks at the queue again
_SCAN = 4  # queue entries examined per free batch slot


@dataclass
class Member:
    """A job taken into the batch."""

    job: Job
    task: GenerationTask | None  # None when the payload cannot be read (the job fails)
    execution: Execution | None = None
    prepared: JobRequests | None = None  # the pipeline requests it samples, once prepared

    @property
    def requests(self) -> list[GenerationRequest]:
        return self.prepared.requests if self.prepared is not None else []


class BatchingWorker(BaseWorker):
    """An rq worker whose ``execute_job`` runs a whole batch; see the module docstring."""

    def __init__(
        self,
        queues: Sequence[Queue],
        *,
        runtime: Runtime,
        settings: Settings,
        storage: ImageStorage,
        metrics: WorkerMetrics | None = None,
        before_batch: Callable[[], object] | None = None,
        **kwargs: Any,
    ):
        super().__init__(queues, serializer=JSONSerializer, **kwargs)
        self.runtime = runtime
        self.settings = settings
        self.storage = storage
        self.metrics = metrics
        self.before_batch = before_batch  # e.g. re-share the host's cores (workers.host_slots)
        self.stop_signal_received = False
        self.store = JobStore(self.connection, settings, metrics)
        self.ownership = Ownership(self.connection, self.store.keys, self.store.queue, self.name)
        self.limits = BatchLimits(
            max_images=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000,
            wait_alone=settings.batch_wait_alone,
        )
        self._running: list[Member] = []
        self._running_lock = threading.Lock()

    # -- the rq hook --------------------------------------------------------------------------
    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run ``job`` and the compatible jobs that join it within the batch window."""
        self.set_state(WorkerStatus.BUSY)  # from here a SIGTERM waits for the batch (warm stop)
        self.ownership.adopt(job.id)
        if self.before_batch is not None:
            self.before_batch()
        try:
            members = self._start(self._gather(job), queue)
            if members:
                self._run(members, queue)
        finally:
            self._set_running([])
            self.set_state(WorkerStatus.IDLE)
        if self.runtime.state is RuntimeState.DEFUNCT:
            log.error("the model runtime is defunct; stopping this worker")
            self._stop_requested = True

    # -- 1. gather ----------------------------------------------------------------------------
    def _gather(self, first: Job) -> list[Member]:
        member = _member(first)
        if member.task is None:
            return [member]
        batch = Batch(self._candidate(member.task, first.id), self.limits, started_at=time.monotonic())
        members = {first.id: member}
        seen: dict[str, Member | None] = {first.id: member}
        while not batch.is_full():
            for candidate in batch.choose(self._waiting(seen, batch)):
                if self.ownership.claim(candidate.job_id):
                    batch.add(candidate)
                    members[candidate.job_id] = seen[candidate.job_id]  # type: ignore[assignment]
            now = time.monotonic()
            if not batch.should_wait(now):
                break
            time.sleep(min(_POLL_S, batch.time_left(now)))
        return [members[job_id] for job_id in batch.job_ids]

    def _waiting(self, seen: dict[str, Member | None], batch: Batch) -> list[Candidate]:
        """The first few queued jobs as candidates, in queue order (unreadable ones skipped)."""
        window = _SCAN * max(1, self.limits.max_images - batch.images)
        raw = self.connection.lrange(self.store.queue.key, 0, window - 1)
        job_ids = [j.decode() if isinstance(j, bytes) else str(j) for j in raw]
        new = [job_id for job_id in job_ids if job_id not in seen]
        for job_id, job in zip(new, Job.fetch_many(new, self.connection, JSONSerializer), strict=True):
            seen[job_id] = _member(job) if job is not None else None
        candidates = []
        for job_id in job_ids:
            member = seen.get(job_id)
            if member is not None and member.task is not None:
                candidates.append(self._candidate(member.task, job_id))
        return candidates

    def _candidate(self, task: GenerationTask, job_id: str) -> Candidate:
        key = BatchKey(task.size, sampling_for(task, self.runtime.default_sampling), task.kind.value)
        return Candidate(job_id, key, task.images)

    # -- 2. start -----------------------------------------------------------------------------
    def _start(self, members: list[Member], queue: Queue) -> list[Member]:
        """Move each member to ``started`` in rq; drop those canceled meanwhile."""
        started: list[Member] = []
        for member in members:
            job = member.job
            if job.get_status() is RqStatus.CANCELED or self.connection.exists(
                self.store.keys.cancel(job.id)
            ):
                self._cancel_unstarted(job)
                continue
            member.execution = self.prepare_execution(job)
            self.prepare_job_execution(job, remove_from_intermediate_queue=True)
            if member.task is None:
                error = ValueError("the job's payload is not a valid generation request")
                self._fail(member, queue, (ValueError, error, None), "invalid_job")
                continue
            started.append(member)
        self._set_running(started)
        self._record_start(started)
        return started

    def _record_start(self, members: list[Member]) -> None:
        if not members:
            return
        batch_id = uuid.uuid4().hex[:12]
        images = sum(m.task.images for m in members if m.task is not None)
        now = time.time()
        with self.connection.pipeline(transaction=False) as pipe:
            for member in members:
                assert member.task is not None
                sampling = sampling_for(member.task, self.runtime.default_sampling)
                member.job.meta.update(
                    batch_id=batch_id,
                    batch_size=images,
                    sampling={s: vars(sampling.for_stage(s)) for s in stages_for_size(member.task.size)},
                    progress={"stage": "clip", "step": 0, "total": 1, "fraction": 0.0},
                )
                pipe.hset(member.job.key, "meta", dump_meta(member.job.meta))
                if self.metrics is not None and "created_at" in member.job.meta:
                    self.metrics.queue_wait.observe(max(0.0, now - float(member.job.meta["created_at"])))
            pipe.execute()

    # -- 3. sample ----------------------------------------------------------------------------
    def _run(self, members: list[Member], queue: Queue) -> None:
        assert members[0].task is not None
        size, sampling = members[0].task.size, sampling_for(members[0].task, self.runtime.default_sampling)
        plan: dict[str, int] = {s: sampling.for_stage(s).steps for s in stages_for_size(size)}
        progress = ProgressWriter(self.connection, [m.job for m in members], plan, keys=self.store.keys)
        members = self._prepare(members, queue, sampling, progress)
        if not members:
            return
        progress.follow([m.job for m in members], _row_spans(members))
        requests = [r for m in members for r in m.requests]
        canceled = CancelWatch(self.connection, self.store.keys, self.ownership, [m.job.id for m in members])
        # The pipeline drops requests; a member (one job) may have several.
        owner = [k for k, m in enumerate(members) for _ in m.requests]

        def canceled_requests() -> set[int]:
            jobs = canceled()
            return {r for r, k in enumerate(owner) if k in jobs}

        timeout = max(m.job.timeout or self.settings.job_timeout_s for m in members)
        try:
            with self.death_penalty_class(timeout, JobTimeoutException, job_id=members[0].job.id):
                output = self.runtime.generate(
                    requests,
                    size,
                    sampling,
                    progress=progress,
                    canceled=canceled_requests,
                    preview=progress.preview,
                )
        except Exception:
            exc_info = sys.exc_info()
            if self._retry_apart(members, queue, exc_info[1]):
                return
            code = _failure_code(exc_info[1])
            for member, ours in zip(members, self.ownership.holds([m.job.id for m in members]), strict=True):
                if ours:
                    self._fail(member, queue, exc_info, code)
                else:
                    self._abandon(member)
            return
        if self.metrics is not None:
            self.metrics.batch_size.observe(sum(r.n for r in requests))
        canceled.refresh()
        images: list[np.ndarray | None] = []
        first = 0
        for member in members:  # each member's requests are consecutive in the batch
            outputs = output.images[first : first + len(member.requests)]
            first += len(member.requests)
            images.append(member.prepared.images(outputs) if member.prepared is not None else None)
        self._finish(members, queue, images, output.timings, canceled)

    def _prepare(
        self, members: list[Member], queue: Queue, sampling: SamplingConfig, progress: ProgressWriter
    ) -> list[Member]:
        """Each member's requests (reading its uploads, encoding and inverting its images); a
        member whose inputs fail fails alone. Returns the members that go on."""
        ready: list[Member] = []
        for member in members:
            assert member.task is not None

            def report(step: int, total: int) -> None:
                progress("prepare", step, total)

            try:
                member.prepared = job_requests(
                    member.task, member.job.id, self.runtime.pipeline, self.storage, sampling, report
                )
            except Exception:
                log.warning("job %s: its inputs could not be prepared", member.job.id, exc_info=True)
                self._fail(member, queue, sys.exc_info(), "invalid_input")
                continue
            ready.append(member)
        return ready

    # -- 4. finish ----------------------------------------------------------------------------
    def _finish(
        self,
        members: list[Member],
        queue: Queue,
        images: Sequence[np.ndarray | None],
        timings: dict[str, float],
        canceled: CancelWatch,
    ) -> None:
        held = self.ownership.holds([m.job.id for m in members])
        expires_at = time.time() + self.settings.result_ttl_s
        for i, member in enumerate(members):
            if not held[i]:
                self._abandon(member)
            elif i in canceled.dropped:
                self._finish_canceled(member)
            elif images[i] is None:
                error = RuntimeError("the pipeline returned no images for this request")
                self._fail(member, queue, (RuntimeError, error, None), "generation_failed")
            else:
                self._succeed(member, queue, images[i], timings, expires_at)  # type: ignore[arg-type]

    def _succeed(
        self, member: Member, queue: Queue, images: np.ndarray, timings: dict[str, float], expires_at: float
    ) -> None:
        job, execution = member.job, member.execution
        assert execution is not None
        try:
            for k, image in enumerate(images):
                self.storage.put(job.id, k, encode_png(image), expires_at)
            extras = member.prepared.extras if member.prepared is not None else {}
            for name, data in extras.items():
                self.storage.put_file(job.id, name, data, expires_at)
        except Exception:
            self._fail(member, queue, sys.exc_info(), "storage_failed")
            return
        result = {"images": len(images), "expires_at": expires_at}
        meta = {
            "images": len(images),
            "timings": {k: round(v, 4) for k, v in timings.items()},
            "expires_at": expires_at,
            "progress": dict(job.meta.get("progress") or {}, fraction=1.0),
        }
        animation = member.prepared.animation if member.prepared is not None else None
        if animation is not None:
            meta["animation"] = animation
        self._end(
            member,
            JobStatus.SUCCEEDED,
            meta=meta,
            transition=lambda: self._finalize_success(job, queue, execution, result),
        )
        if self.metrics is not None:
            self.metrics.images.inc(len(images))

    def _fail(self, member: Member, queue: Queue, exc_info: ExcInfo, code: str) -> None:
        job, execution, exc = member.job, member.execution, exc_info[1]
        assert execution is not None
        message = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
        self._end(
            member,
            JobStatus.FAILED,
            error=(code, message),
            transition=lambda: self._finalize_failure(job, queue, execution, exc_info),
        )

    def _finish_canceled(self, member: Member) -> None:
        """A member canceled mid-batch: end its execution, then rq's cancel (CanceledJobRegistry)."""
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(member.job, pipeline=pipe, execution=member.execution)
            pipe.execute()
        self._end(member, JobStatus.CANCELED)

    def _cancel_unstarted(self, job: Job) -> None:
        self.ownership.release(job.id)
        self.store.record_final(job, JobStatus.CANCELED)

    def _end(self, member: Member, status: JobStatus, **final: Any) -> None:
        """Record the member's final state (``JobStore.record_final``) and let go of it."""
        self.store.record_final(member.job, status, **final)
        self.ownership.release(member.job.id)
        self._set_running([m for m in self._snapshot_running() if m is not member])

    def _abandon(self, member: Member) -> None:
        """The reaper took the job over (this worker stalled past its lease): record nothing."""
        log.warning("job %s was taken over by the reaper; dropping this run's result", member.job.id)
        if member.execution is not None:
            self.executions.pop(member.execution.id, None)
        self._set_running([m for m in self._snapshot_running() if m is not member])

    # -- faults -------------------------------------------------------------------------------
    def _retry_apart(self, members: list[Member], queue: Queue, exc: BaseException | None) -> bool:
        """A batch of several jobs that raised is sampled again as two halves: out of memory, at
        half the size; any other error, to corner the job that raises, so that it fails alone
        and the others succeed. Not after a timeout, a lost job or a defunct runtime."""
        if len(members) < 2 or isinstance(exc, JobTimeoutException):
            return False
        if self.runtime.state is not RuntimeState.READY or not all(
            self.ownership.holds([m.job.id for m in members])
        ):
            return False
        half = (len(members) + 1) // 2
        log.warning(
            "batch of %d jobs failed (%s: %s); sampling it again as %d + %d",
            len(members),
            type(exc).__name__,
            exc,
            half,
            len(members) - half,
        )
        for part in (members[:half], members[half:]):
            self._run(part, queue)
        return True

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM/SIGINT: rq's warm stop (the batch finishes, then the worker exits), bounded by
        ``shutdown_grace_s``: past it the worker gives up its jobs (the batch stops at its next
        step, records nothing) and hands them back to the queue as it exits (``workers.main``)."""
        self.stop_signal_received = True
        if self.get_state() == WorkerStatus.BUSY:
            grace = threading.Timer(self.settings.shutdown_grace_s, self._grace_expired)
            grace.daemon = True
            grace.start()
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

    def _grace_expired(self) -> None:
        log.warning(
            "the batch ran past the shutdown grace (%.0fs); handing its jobs back to the queue",
            self.settings.shutdown_grace_s,
        )
        self.ownership.surrender()

    # -- heartbeats (called by the lease thread) ----------------------------------------------
    def heartbeat_running(self) -> None:
        """Keep rq's view of the running executions fresh while a long batch samples."""
        for member in self._snapshot_running():
            if member.execution is not None:
                self.maintain_heartbeats(member.job, member.execution)

    def _snapshot_running(self) -> list[Member]:
        with self._running_lock:
            return list(self._running)

    def _set_running(self, members: list[Member]) -> None:
        with self._running_lock:
            self._running = members


def _failure_code(exc: BaseException | None) -> str:
    if isinstance(exc, JobTimeoutException):
        return "timeout"
    message = str(exc).lower()
    if isinstance(exc, MemoryError) or "out of memory" in message or "can't allocate memory" in message:
        return "out_of_memory"
    return "generation_failed"


def _member(job: Job) -> Member:
    try:
        return Member(job, GenerationTask.from_job(job))
    except Exception:
        log.warning("job %s has an unreadable payload", job.id, exc_info=True)
        return Member(job, None)


def _row_spans(members: Sequence[Member]) -> list[range]:
    """Each member's rows of the batch (its requests' images, consecutive, in member order)."""
    spans: list[range] = []
    start = 0
    for member in members:
        count = sum(r.n for r in member.requests)
        spans.append(range(start, start + count))
        start += count
    return spans
