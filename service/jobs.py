"""The job store: rq jobs plus our metadata, shared by the API and the workers.

One rq job per request on one queue (rq's JSON serializer). What rq does not track lives in the
job's ``meta`` (written only by the worker that owns the job, or by the reaper once that worker
is dead) or in keys of our own under ``unclip:<queue>:`` (:class:`Keys`): cancel flags,
idempotency keys, worker leases, the webhook outbox and the "final" markers that let exactly one
process count and announce a job's end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis import Redis
from rq.exceptions import DeserializationError, InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RqStatus
from rq.queue import Queue
from rq.serializers import JSONSerializer

from service.schemas import (
    MAX_SEED,
    GenerateRequest,
    ImageLink,
    JobErrorInfo,
    JobParams,
    JobStatus,
    JobStatusResponse,
    Progress,
    StageParams,
)
from service.settings import Settings
from workers.tasks import JOB_FUNC, GenerationTask

_RQ_TO_PUBLIC = {
    RqStatus.CREATED: JobStatus.QUEUED,
    RqStatus.QUEUED: JobStatus.QUEUED,
    RqStatus.DEFERRED: JobStatus.QUEUED,
    RqStatus.SCHEDULED: JobStatus.QUEUED,
    RqStatus.READY_TO_ENQUEUE: JobStatus.QUEUED,
    RqStatus.RATE_LIMITED: JobStatus.QUEUED,
    RqStatus.STARTED: JobStatus.RUNNING,
    RqStatus.FINISHED: JobStatus.SUCCEEDED,
    RqStatus.FAILED: JobStatus.FAILED,
    RqStatus.STOPPED: JobStatus.FAILED,
    RqStatus.CANCELED: JobStatus.CANCELED,
}


class Keys:
    """Names of our Redis keys for one queue (rq's own keys keep their ``rq:`` prefix)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.leases = f"{prefix}:workers"  # set: names of workers that hold (or held) a lease
        self.webhooks = f"{prefix}:webhooks"  # list: webhook deliveries waiting for a sender

    def lease(self, worker: str) -> str:
        return f"{self.prefix}:lease:{worker}"

    def owned(self, worker: str) -> str:
        return f"{self.prefix}:owned:{worker}"

    def reaping(self, worker: str) -> str:
        return f"{self.prefix}:reaping:{worker}"

    def webhooks_inflight(self, worker: str) -> str:
        return f"{self.prefix}:webhooks:inflight:{worker}"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:cancel:{job_id}"

    def final(self, job_id: str) -> str:
        return f"{self.prefix}:final:{job_id}"

    def idempotency(self, key: str) -> str:
        return f"{self.prefix}:idem:{hashlib.sha256(key.encode()).hexdigest()}"

    def intermediate_seen(self, job_id: str) -> str:
        return f"{self.prefix}:limbo:{job_id}"


class JobConflict(Exception):
    """The job is already in a final state that the operation cannot change."""

    def __init__(self, status: JobStatus):
        super().__init__(f"job already {status.value}")
        self.status = status


class QueueFull(Exception):
    """More jobs are waiting than ``max_queue_depth`` allows."""

    def __init__(self, depth: int, limit: int):
        super().__init__(f"{depth} jobs are waiting (limit {limit}); retry later")
        self.depth = depth


class IdempotencyKeyReused(Exception):
    """The ``Idempotency-Key`` was used before with a different request body."""


class IdempotencyKeyInFlight(Exception):
    """The first request with this ``Idempotency-Key`` is still being enqueued."""


@dataclass(frozen=True)
class Submission:
    job: Job
    replayed: bool  # an earlier submit with the same Idempotency-Key made this job


@dataclass(frozen=True)
class CancelOutcome:
    status: JobStatus  # after the call: canceled, or still running until the worker's next step
    newly_final: bool  # this call moved the job to its final state (count it once)


@dataclass(frozen=True)
class IdempotencyRecord:
    job_id: str
    fingerprint: str


def new_job_id() -> str:
    """Unguessable: 144 random bits (a job id is the only key to its images)."""
    return "gen_" + secrets.token_urlsafe(18)


def dump_meta(meta: dict[str, Any]) -> bytes:
    """``meta`` as rq's JSON serializer stores it (for writing the field in a pipeline)."""
    return json.dumps(meta).encode()


def public_status(job: Job) -> JobStatus:
    return _RQ_TO_PUBLIC.get(job.get_status(refresh=False), JobStatus.QUEUED)


def _timestamp(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


class JobStore:
    """Submit, read, render and cancel generation jobs."""

    def __init__(self, connection: Redis, settings: Settings):
        self.connection = connection
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.queue = Queue(settings.queue, connection=connection, serializer=JSONSerializer)

    # -- submit -------------------------------------------------------------------------------
    def submit_request(self, request: GenerateRequest, idempotency_key: str | None = None) -> Submission:
        """Enqueue ``request`` (a random seed filled in when absent), honouring an idempotency key.

        The key is bound with ``SET NX`` before the enqueue, so of two concurrent submits with
        one key only one enqueues; a key whose job is missing is released again on failure.
        """
        fingerprint = request.fingerprint()
        if idempotency_key is not None:
            existing = self.find_idempotent(idempotency_key)
            if existing is not None:
                return self._replay(existing, fingerprint)
        depth = self.queue_depth()
        if depth >= self.settings.max_queue_depth:
            raise QueueFull(depth, self.settings.max_queue_depth)
        job_id = new_job_id()
        if request.seed is None:
            request = request.model_copy(update={"seed": secrets.randbelow(MAX_SEED + 1)})
        if idempotency_key is not None:
            existing = self.claim_idempotency_key(idempotency_key, IdempotencyRecord(job_id, fingerprint))
            if existing is not None:
                return self._replay(existing, fingerprint)
        try:
            return Submission(self.submit(request, job_id), replayed=False)
        except BaseException:
            if idempotency_key is not None:
                self.release_idempotency_key(idempotency_key)
            raise

    def _replay(self, existing: IdempotencyRecord, fingerprint: str) -> Submission:
        if existing.fingerprint != fingerprint:
            raise IdempotencyKeyReused
        job = self.fetch(existing.job_id)
        if job is None:
            raise IdempotencyKeyInFlight
        return Submission(job, replayed=True)

    def submit(self, request: GenerateRequest, job_id: str) -> Job:
        """Enqueue ``request`` (whose seed is set) as job ``job_id``."""
        task = GenerationTask(request)
        return self.queue.enqueue_call(
            JOB_FUNC,
            kwargs=task.to_kwargs(),
            job_id=job_id,
            timeout=self.settings.job_timeout_s,
            result_ttl=self.settings.record_ttl_s,
            failure_ttl=self.settings.record_ttl_s,
            description=f"generate(n={request.n}, size={request.size})",
            meta={"created_at": time.time(), "attempts": 0},
        )

    def queue_depth(self) -> int:
        return int(self.queue.count)

    # -- idempotency --------------------------------------------------------------------------
    def find_idempotent(self, key: str) -> IdempotencyRecord | None:
        raw = self.connection.get(self.keys.idempotency(key))
        if raw is None:
            return None
        data = json.loads(raw)
        return IdempotencyRecord(job_id=data["job_id"], fingerprint=data["fingerprint"])

    def claim_idempotency_key(self, key: str, record: IdempotencyRecord) -> IdempotencyRecord | None:
        """Bind ``key`` to ``record`` unless it is bound already; returns the existing binding."""
        value = json.dumps({"job_id": record.job_id, "fingerprint": record.fingerprint})
        if self.connection.set(
            self.keys.idempotency(key), value, nx=True, ex=self.settings.idempotency_ttl_s
        ):
            return None
        return self.find_idempotent(key) or record

    def release_idempotency_key(self, key: str) -> None:
        self.connection.delete(self.keys.idempotency(key))

    # -- read ---------------------------------------------------------------------------------
    def fetch(self, job_id: str) -> Job | None:
        """Our job ``job_id``, or None (unknown, expired, another queue's, or not a generation job)."""
        try:
            job = Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
            if job.origin != self.queue.name or job.func_name != JOB_FUNC:
                return None
            GenerationTask.from_job(job)  # a record that cannot be rendered is not one of ours
        except (NoSuchJobError, DeserializationError, ValueError, KeyError, TypeError):
            return None
        return job

    def render(self, job: Job, base_url: str = "") -> JobStatusResponse:
        """The public record of ``job``; image URLs are absolute when ``base_url`` is given."""
        status = public_status(job)
        meta: dict[str, Any] = job.meta
        request = GenerationTask.from_job(job).request
        position = self.queue.get_job_position(job.id) if status is JobStatus.QUEUED else None
        expires_at = meta.get("expires_at")
        images: list[ImageLink] = []
        if status is JobStatus.SUCCEEDED and (expires_at is None or expires_at > time.time()):
            base = base_url.rstrip("/")
            images = [
                ImageLink(index=k, url=f"{base}/jobs/{job.id}/images/{k}.png")
                for k in range(meta.get("images", 0))
            ]
        error = meta.get("error")
        if status is JobStatus.FAILED and error is None:
            error = {"code": "generation_failed", "message": "the job failed"}
        return JobStatusResponse(
            id=job.id,
            status=status,
            created_at=float(meta.get("created_at") or _timestamp(job.created_at) or 0.0),
            params=JobParams(**request.model_dump(mode="json")),
            queue_position=position + 1 if position is not None else None,
            progress=Progress(**meta["progress"])
            if meta.get("progress") and status is JobStatus.RUNNING
            else None,
            sampling={k: StageParams(**v) for k, v in meta["sampling"].items()}
            if meta.get("sampling")
            else None,
            timings=meta.get("timings") or {},
            images=images,
            error=JobErrorInfo(**error) if error and status is JobStatus.FAILED else None,
            cancel_requested=bool(self.connection.exists(self.keys.cancel(job.id))),
            started_at=_timestamp(job.started_at) if status is not JobStatus.QUEUED else None,
            finished_at=meta.get("finished_at"),
            expires_at=expires_at,
            attempts=int(meta.get("attempts", 0)),
            batch_size=meta.get("batch_size"),
        )

    # -- cancel -------------------------------------------------------------------------------
    def cancel(self, job: Job) -> CancelOutcome:
        """Cancel a queued job now, or flag a running one (its worker drops it at the next step).

        Raises :class:`JobConflict` for a job that already succeeded or failed; canceling a
        canceled job is a no-op, so a retried ``DELETE`` gets the same answer.
        """
        status = public_status(job)
        if status is JobStatus.CANCELED:
            return CancelOutcome(status, newly_final=False)
        if status.is_terminal():
            raise JobConflict(status)
        self.connection.set(self.keys.cancel(job.id), 1, ex=self.settings.record_ttl_s)
        if status is not JobStatus.QUEUED:
            return CancelOutcome(status, newly_final=False)
        with contextlib.suppress(InvalidJobOperation):
            job.cancel()
        job.meta["finished_at"] = time.time()
        job.save_meta()  # type: ignore[no-untyped-call]
        self.connection.expire(job.key, self.settings.record_ttl_s)
        if not self.claim_final(job.id):
            return CancelOutcome(JobStatus.CANCELED, newly_final=False)
        job.refresh()  # type: ignore[no-untyped-call]
        webhook = GenerationTask.from_job(job).request.webhook
        if webhook is not None:
            self.push_webhook(str(webhook), self.render(job, self.settings.public_url or ""))
        return CancelOutcome(JobStatus.CANCELED, newly_final=True)

    def claim_final(self, job_id: str) -> bool:
        """True for the one caller that gets to count and announce the job's final state."""
        return bool(self.connection.set(self.keys.final(job_id), 1, nx=True, ex=self.settings.record_ttl_s))

    def push_webhook(self, url: str, job: JobStatusResponse) -> None:
        """Queue a delivery of ``job`` to ``url``; a worker's sender thread signs and sends it."""
        delivery = {
            "id": "whd_" + secrets.token_urlsafe(12),
            "url": url,
            "event": f"job.{job.status.value}",
            "job": job.model_dump(mode="json"),
        }
        self.connection.rpush(self.keys.webhooks, json.dumps(delivery))

    # -- workers ------------------------------------------------------------------------------
    def live_workers(self) -> int:
        """Workers whose lease is current (a kill -9'd worker drops out within ``lease_ttl_s``)."""
        names = [
            n.decode() if isinstance(n, bytes) else str(n) for n in self.connection.smembers(self.keys.leases)
        ]
        if not names:
            return 0
        with self.connection.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(self.keys.lease(name))
            return sum(1 for alive in pipe.execute() if alive)
