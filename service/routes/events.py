"""Live progress of a job as Server-Sent Events: ``GET /jobs/{id}/events``.

The stream follows the job's record (read a few times a second, as often as the worker writes
progress) and ends with its final state:

- ``queued``: ``{"status", "queue_position"}``, again whenever the position changes;
- ``running``: ``{"status"}`` when a worker starts the job;
- ``progress``: ``{"stage", "step", "total", "fraction"}`` as the worker writes it (≤ 4 a second);
- ``preview`` (with ``?previews=1``): the same, plus ``seq`` and ``image``, the job's current
  prediction of its images (x̂_0) as a small PNG strip in a data URL. While such a stream is open
  the route keeps ``Keys.listening(id)`` alive; the worker makes previews only for jobs with it;
- ``succeeded``, ``failed`` or ``canceled``: the job's record (as ``GET /jobs/{id}``, image URLs
  included), then the stream ends.

Each event's ``id`` says how far the job had come (its attempt, then the fraction of its chain),
so a client that reconnects with ``Last-Event-ID`` gets the current state and only newer progress;
one that already saw the final event gets ``204``, which tells an ``EventSource`` to stop.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job
from sse_starlette import EventSourceResponse, JSONServerSentEvent, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from contract.jobs import JobStore, public_status
from contract.schemas import ErrorResponse, JobStatus
from service.deps import JobDep, StoreDep

router = APIRouter(tags=["generations"])

POLL_S = 0.25  # the worker writes progress at most 4 times a second
LISTEN_TTL_S = 5  # a closed stream stops the previews this long after
PING_S = 15  # a comment line, so proxies keep the connection open
RETRY_MS = 1000  # the reconnection delay an EventSource is told
FINAL_ID = 10**9  # the id of the final event: above every progress id
_ATTEMPT_SPAN = 20_000  # ids of one attempt: 0 queued, 1 + 10000·fraction running


@dataclass(frozen=True)
class Snapshot:
    """The job as one poll saw it."""

    status: JobStatus
    attempts: int
    position: int | None
    progress: dict[str, Any] | None
    preview: dict[str, Any] | None

    @property
    def event_id(self) -> int:
        if self.status.is_terminal():
            return FINAL_ID
        base = self.attempts * _ATTEMPT_SPAN
        if self.status is JobStatus.QUEUED:
            return base
        fraction = float((self.progress or {}).get("fraction", 0.0))
        return base + 1 + round(fraction * 10_000)


def _snapshot(job: Job, store: JobStore, previews: bool) -> Snapshot:
    """Re-read the record (in a thread: the Redis client is synchronous); with ``previews``, keep
    the listening flag alive and read the latest preview."""
    job.refresh()  # type: ignore[no-untyped-call]
    status = public_status(job)
    position = store.queue.get_job_position(job.id) if status is JobStatus.QUEUED else None
    preview = None
    if previews and not status.is_terminal():
        with store.connection.pipeline(transaction=False) as pipe:
            pipe.set(store.keys.listening(job.id), 1, ex=LISTEN_TTL_S)
            pipe.get(store.keys.preview(job.id))
            _, raw = pipe.execute()
        preview = json.loads(raw) if raw else None
    return Snapshot(
        status=status,
        attempts=int(job.meta.get("attempts", 0)),
        position=position + 1 if position is not None else None,
        progress=job.meta.get("progress") if status is JobStatus.RUNNING else None,
        preview=preview if status is JobStatus.RUNNING else None,
    )


def _last_event_id(value: str | None) -> int:
    try:
        return int(value) if value is not None else -1
    except ValueError:
        return -1


async def _events(
    job: Job, store: JobStore, base_url: str, previews: bool, last_id: int
) -> AsyncIterator[ServerSentEvent]:
    shown: tuple[JobStatus, int, int | None] | None = None  # (status, attempts, position) sent
    preview_seq: int | None = None
    while True:
        try:
            snap = await run_in_threadpool(_snapshot, job, store, previews)
        except (NoSuchJobError, RedisError):
            return  # the record expired, or Redis went away: the client reconnects or reads the job
        event_id = snap.event_id
        if snap.status.is_terminal():
            record = await run_in_threadpool(store.render, job, base_url)
            yield JSONServerSentEvent(
                record.model_dump(mode="json"), event=snap.status.value, id=str(event_id)
            )
            return
        if shown != (snap.status, snap.attempts, snap.position):
            data = {"status": snap.status.value, "queue_position": snap.position}
            yield JSONServerSentEvent(data, event=snap.status.value, id=str(event_id), retry=RETRY_MS)
            shown = (snap.status, snap.attempts, snap.position)
        if snap.progress and event_id > last_id:
            yield JSONServerSentEvent(snap.progress, event="progress", id=str(event_id))
            last_id = event_id
        if snap.preview and snap.preview.get("seq") != preview_seq:
            preview_seq = snap.preview.get("seq")
            image = f"data:image/png;base64,{snap.preview.pop('image', '')}"
            yield JSONServerSentEvent({**snap.preview, "image": image}, event="preview", id=str(event_id))
        await anyio.sleep(POLL_S)


@router.get(
    "/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "the job's events, to its final state"},
        204: {"description": "Last-Event-ID was the final event: nothing more will come"},
        404: {"model": ErrorResponse},
    },
)
async def job_events(
    job: JobDep,
    request: Request,
    store: StoreDep,
    previews: Annotated[bool, Query(description="also stream low-resolution previews")] = False,
    last_event_id: Annotated[str | None, Header(description="resume after this event")] = None,
) -> Response:
    """The job's progress as Server-Sent Events, ending with its final state."""
    last_id = _last_event_id(last_event_id)
    if last_id >= FINAL_ID and public_status(job).is_terminal():
        return Response(status_code=204)
    stream = _events(job, store, str(request.base_url), previews, last_id)
    return EventSourceResponse(stream, ping=PING_S)
