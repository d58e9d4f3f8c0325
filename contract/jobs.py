"""The job store: rq jobs plus our metadata, shared by the API and the workers.

One rq job per request on one queue (rq's JSON serializer). What rq does not track lives in the
job's ``meta`` (written only by the worker that owns the job, or by the reaper once that worker
is dead) or in keys of our own under ``unclip:<queue>:`` (:class:`Keys`): cancel flags,
idempotency keys, worker leases, the webhook outbox and the "final" markers that let exactly one
process count and announce a job's end.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq.exceptions import DeserializationError, InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RqStatus
from rq.queue import Queue
from rq.serializers import JSONSerializer

from contract.admission import Admission, KeyLimits, Refused, Slot
from contract.connection import as_text
from contract.keys import Keys
from contract.metrics import FinalStateMetrics
from contract.schemas import (
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
from contract.schemas import fingerprint as request_fingerprint
from contract.settings import Settings
from contract.signing import UrlSigner, load_signer
from contract.storage import has_expired
from contract.tasks import JOB_FUNC, GenerationTask, TaskParams

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


_UNADMITTED_TTL_S = 60


def new_job_id() -> str:
    """Unguessable: 144 random bits (a job id is the only key to its images)."""
    return "gen_" + secrets.token_urlsafe(18)


def dump_meta(meta: dict[str, Any]) -> bytes:
    """``meta`` as rq's JSON serializer stores it (for writing the field in a pipeline)."""
    return json.dumps(meta).encode()


def public_status(job: Job) -> JobStatus:
    return _RQ_TO_PUBLIC.get(job.get_status(refresh=False), JobStatus.QUEUED)


# An absolute path (two or more segments) in an error message: the client learns nothing from
# it but the server's layout.
_SERVER_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.@+-]+/)+[\w.@+-]*")


# A quoted file name with a directory in it, as OS errors print them ("No such file or
# directory: 'var/images/ab/gen_x/0.png'"): relative paths say as much as absolute ones.
_QUOTED_PATH = re.compile(r"""(['"])[^'"\s]*[/\\][^'"]*\1""")


def public_message(message: str) -> str:
    """An error message fit for a client: server paths (absolute, or quoted with a directory)
    replaced, at most 500 characters."""
    return _SERVER_PATH.sub("<path>", _QUOTED_PATH.sub("'<path>'", message))[:500]


def _timestamp(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


class JobStore:
    """Submit, read, render, cancel and finish generation jobs.

    ``metrics`` is where this process counts the final states it records (the API's or the
    worker's registry); None counts nothing. ``owner`` is the API key id of the caller this store
    serves (the API builds one per request): its submits belong to it and it reads only its own
    jobs. None (workers, the reaper, keys off) sees every job. ``limits`` are the owner's images
    per minute and unfinished jobs at once, enforced at admission.
    """

    def __init__(
        self,
        connection: Redis,
        settings: Settings,
        metrics: FinalStateMetrics | None = None,
        owner: str | None = None,
        limits: KeyLimits | None = None,
    ):
        self.connection = connection
        self.settings = settings
        self.metrics = metrics
        self.owner = owner
        self.limits = limits
        self.admission = Admission(connection)
        self.keys = Keys(settings.key_prefix)
        self.queue = Queue(settings.queue, connection=connection, serializer=JSONSerializer)
        self._signer: UrlSigner | None = None

    @property
    def signer(self) -> UrlSigner:
        """Signs the image URLs this store renders (the key is read from Redis once per store)."""
        if self._signer is None:
            self._signer = load_signer(self.connection, self.settings)
        return self._signer

    # -- submit -------------------------------------------------------------------------------
    def submit_request(
        self,
        request: TaskParams,
        idempotency_key: str | None = None,
        *,
        fingerprint: str | None = None,
        before_enqueue: Callable[[str], None] | None = None,
    ) -> Submission:
        """Enqueue ``request`` (a random seed filled in when absent), honouring an idempotency key.

        The key is bound with ``SET NX`` before the enqueue, so of two concurrent submits with
        one key only one enqueues; a key whose job is missing is released again on failure.
        ``fingerprint`` (default: the request's own) decides whether a replay matches; an image job
        includes its uploads. ``before_enqueue(job_id)`` runs just before the enqueue (the API
        stores a job's uploads there), never for a replay. The job belongs to this store's
        ``owner``, and idempotency keys are scoped to it.
        """
        owner = self.owner
        fingerprint = fingerprint or request_fingerprint(request)
        if idempotency_key is not None:
            existing = self.find_idempotent(idempotency_key, owner)
            if existing is not None:
                return self._replay(existing, fingerprint, owner)
        depth = self.queue_depth()
        if depth >= self.settings.max_queue_depth:
            raise QueueFull(depth, self.settings.max_queue_depth)
        job_id = new_job_id()
        if request.seed is None:
            request = request.model_copy(update={"seed": secrets.randbelow(MAX_SEED + 1)})
        if idempotency_key is not None:
            record = IdempotencyRecord(job_id, fingerprint)
            existing = self.claim_idempotency_key(idempotency_key, record, owner)
            if existing is not None:
                return self._replay(existing, fingerprint, owner)
        try:
            if before_enqueue is not None:
                before_enqueue(job_id)
            return Submission(self.submit(request, job_id), replayed=False)
        except BaseException:
            if idempotency_key is not None:
                self.release_idempotency_key(idempotency_key, owner)
            raise

    def _replay(self, existing: IdempotencyRecord, fingerprint: str, owner: str | None) -> Submission:
        if existing.fingerprint != fingerprint:
            raise IdempotencyKeyReused
        job = self.fetch(existing.job_id)
        if job is None:
            raise IdempotencyKeyInFlight
        return Submission(job, replayed=True)

    def submit(self, request: TaskParams, job_id: str) -> Job:
        """Enqueue ``request`` (whose seed is set) as job ``job_id`` of this store's owner, if the
        queue and the owner's limits have room (``contract.admission``: checked and pushed in one
        Lua script); else :class:`QueueFull` or :class:`~contract.admission.Refused`."""
        task = GenerationTask(request)
        job = self.queue.create_job(
            JOB_FUNC,
            kwargs=task.to_kwargs(),
            job_id=job_id,
            timeout=self.settings.job_timeout_s,
            result_ttl=self.settings.record_ttl_s,
            failure_ttl=self.settings.record_ttl_s,
            description=f"{task.kind.value}(images={task.images}, size={request.size})",
            meta={"created_at": time.time(), "attempts": 0, "owner": self.owner},
        )
        job.origin = self.queue.name
        job.enqueued_at = datetime.now(UTC)
        with self.connection.pipeline() as pipe:
            job.save(pipeline=pipe)
            pipe.expire(job.key, _UNADMITTED_TTL_S)  # until admitted: a crash here leaves nothing
            pipe.execute()
        try:
            self.admission.admit(
                self._slot(job), job.id, self.settings.max_queue_depth, task.images, self.limits
            )
        except Refused as refusal:
            if refusal.code == "queue_full":
                raise QueueFull(self.queue_depth(), self.settings.max_queue_depth) from None
            raise
        return job

    def _slot(self, job: Job) -> Slot:
        keyed = self.owner is not None and self.limits is not None
        return Slot(
            queue_key=self.queue.key,
            queues_key=self.queue.redis_queues_keys,
            record_key=job.key,
            job_prefix=Job.redis_job_namespace_prefix,
            active_key=self.keys.active_jobs(self.owner) if keyed and self.owner else None,
            window_key=self.keys.image_rate(self.owner) if keyed and self.owner else None,
        )

    def queue_depth(self) -> int:
        return int(self.queue.count)

    # -- idempotency --------------------------------------------------------------------------
    def find_idempotent(self, key: str, owner: str | None = None) -> IdempotencyRecord | None:
        raw = self.connection.get(self.keys.idempotency(key, owner))
        if raw is None:
            return None
        data = json.loads(raw)
        return IdempotencyRecord(job_id=data["job_id"], fingerprint=data["fingerprint"])

    def claim_idempotency_key(
        self, key: str, record: IdempotencyRecord, owner: str | None = None
    ) -> IdempotencyRecord | None:
        """Bind ``owner``'s ``key`` to ``record`` unless it is bound already; returns the existing
        binding."""
        value = json.dumps({"job_id": record.job_id, "fingerprint": record.fingerprint})
        if self.connection.set(
            self.keys.idempotency(key, owner), value, nx=True, ex=self.settings.idempotency_ttl_s
        ):
            return None
        return self.find_idempotent(key, owner) or record

    def release_idempotency_key(self, key: str, owner: str | None = None) -> None:
        self.connection.delete(self.keys.idempotency(key, owner))

    # -- read ---------------------------------------------------------------------------------
    def fetch(self, job_id: str) -> Job | None:
        """Our job ``job_id``, or None (unknown, expired, another queue's, not a generation job,
        or, for a store with an ``owner``, another API key's: tenancy lives here, so every route
        that looks a job up answers 404 for someone else's)."""
        owner = self.owner
        try:
            job = Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
            if job.origin != self.queue.name or job.func_name != JOB_FUNC:
                return None
            if owner is not None and job.meta.get("owner") != owner:
                return None
            GenerationTask.from_job(job)  # a record that cannot be rendered is not one of ours
        except (NoSuchJobError, DeserializationError, ValueError, KeyError, TypeError):
            return None
        return job

    def render(self, job: Job, base_url: str = "") -> JobStatusResponse:
        """The public record of ``job``; image and animation URLs are signed (fetchable without
        the key until they expire) and absolute when ``base_url`` is given."""
        status = public_status(job)
        meta: dict[str, Any] = job.meta
        request = GenerationTask.from_job(job).request
        position = self.queue.get_job_position(job.id) if status is JobStatus.QUEUED else None
        expires_at = meta.get("expires_at")
        images: list[ImageLink] = []
        if status is JobStatus.SUCCEEDED and not has_expired(expires_at):
            base = base_url.rstrip("/")
            images = [
                ImageLink(index=k, url=base + self.signer.sign(f"/jobs/{job.id}/images/{k}.png"))
                for k in range(meta.get("images", 0))
            ]
        error = meta.get("error")
        if status is JobStatus.FAILED and error is None:
            error = {"code": "generation_failed", "message": "the job failed"}
        return JobStatusResponse(
            id=job.id,
            status=status,
            created_at=float(meta.get("created_at") or _timestamp(job.created_at) or 0.0),
            kind=GenerationTask(request).kind,
            params=JobParams(**request.model_dump(mode="json"))
            if isinstance(request, GenerateRequest)
            else request,
            animation=base_url.rstrip("/") + self.signer.sign(f"/jobs/{job.id}/animation.{meta['animation']}")
            if images and meta.get("animation")
            else None,
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
        newly_final = self.record_final(job, JobStatus.CANCELED)
        return CancelOutcome(JobStatus.CANCELED, newly_final=newly_final)

    # -- the end of a job ---------------------------------------------------------------------
    def record_final(
        self,
        job: Job,
        status: JobStatus,
        *,
        transition: Callable[[], object] | None = None,
        error: tuple[str, str] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record that ``job`` ended in ``status``: the one way a job reaches a final state.

        Called by the cancel route, the worker (success, failure, cancel) and the reaper alike,
        in this order, so a reader never sees a final status without its timestamp and a webhook
        never describes an unfinished job:

        1. ``meta``: ``finished_at``; ``error`` = (code, message) for a failure, the message
           stripped of server paths; progress cleared for a cancel; plus the caller's ``meta``
           (images, timings, expiry of a success);
        2. rq's own transition, so its registries tell the truth: ``transition`` (the worker's
           ``_finalize_success``/``_finalize_failure``, the reaper's ``record_job_failure``), or for
           a cancel without one, ``job.cancel()`` (CanceledJobRegistry);
        3. a canceled record expires after ``record_ttl_s`` like a finished one;
        4. the "final" claim (SET NX): the one caller that wins counts the metric and queues the
           webhook. Returns True for that caller.
        """
        updates: dict[str, Any] = {"finished_at": time.time(), **(meta or {})}
        if error is not None:
            updates["error"] = {"code": error[0], "message": public_message(error[1])}
        if status is JobStatus.CANCELED:
            updates["progress"] = None
        job.meta.update(updates)
        job.save_meta()  # type: ignore[no-untyped-call]
        if transition is not None:
            transition()
        elif status is JobStatus.CANCELED:
            with contextlib.suppress(InvalidJobOperation):
                job.cancel()
        if status is JobStatus.CANCELED:
            self.connection.expire(job.key, self.settings.record_ttl_s)
        owner = job.meta.get("owner")
        if owner:
            self.connection.srem(self.keys.active_jobs(owner), job.id)  # room for the key's next job
        if not self.claim_final(job.id):
            return False
        if self.metrics is not None:
            created_at = job.meta.get("created_at")
            latency = time.time() - float(created_at) if created_at is not None else None
            self.metrics.count_final(status.value, latency)
        webhook = GenerationTask.from_job(job).request.webhook
        if webhook is not None:
            job.refresh()  # type: ignore[no-untyped-call]
            self.push_webhook(str(webhook), self.render(job, self.settings.public_url or ""))
        return True

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
        names = [as_text(n) for n in self.connection.smembers(self.keys.leases)]
        if not names:
            return 0
        with self.connection.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(self.keys.lease(name))
            return sum(1 for alive in pipe.execute() if alive)
