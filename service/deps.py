"""FastAPI dependencies as ``Annotated`` aliases; the repeated "find this job or 404" lives here."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Header, Path, Request
from redis import Redis
from rq.job import Job

from contract.admission import KeyLimits
from contract.jobs import JobStore
from contract.metrics import ApiMetrics
from contract.storage import ImageStorage, LocalImageStorage
from service.app_settings import SettingsDep
from service.auth import PrincipalDep, limits_of
from service.errors import ApiError

_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Visible ASCII only: the key is echoed into logs and Redis key names are hashed from it.
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def get_redis(request: Request) -> Redis:
    redis: Redis = request.app.state.redis
    return redis


RedisDep = Annotated[Redis, Depends(get_redis)]


def get_metrics(request: Request) -> ApiMetrics:
    metrics: ApiMetrics = request.app.state.metrics
    return metrics


MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]


def get_store(
    principal: PrincipalDep, redis: RedisDep, settings: SettingsDep, metrics: MetricsDep
) -> JobStore:
    """The job store of the caller: it submits jobs as theirs and reads only theirs (a route that
    takes it is authenticated even if its router were included without the auth dependency)."""
    limits = None
    if principal.key is not None:
        _, images_per_minute, max_active_jobs = limits_of(principal.key, settings)
        limits = KeyLimits(images_per_minute=images_per_minute, max_active_jobs=max_active_jobs)
    return JobStore(redis, settings, metrics, owner=principal.owner, limits=limits)


StoreDep = Annotated[JobStore, Depends(get_store)]


def get_system_store(redis: RedisDep, settings: SettingsDep, metrics: MetricsDep) -> JobStore:
    """A store that belongs to nobody: readiness and metrics, which read no job."""
    return JobStore(redis, settings, metrics)


SystemStoreDep = Annotated[JobStore, Depends(get_system_store)]


def get_storage(settings: SettingsDep) -> ImageStorage:
    return LocalImageStorage(settings.storage_dir)


StorageDep = Annotated[ImageStorage, Depends(get_storage)]


def get_job(
    job_id: Annotated[str, Path(description="the id returned by POST /generate")], store: StoreDep
) -> Job:
    """The caller's job, or a 404: also for ids that could never exist (ids cannot be probed by
    shape) and for another API key's job (tenancy, in ``JobStore.fetch``: 404, not 403)."""
    job = store.fetch(job_id) if _JOB_ID.match(job_id) else None
    if job is None:
        raise ApiError(
            404, "job_not_found", f"no job with id {job_id!r} (unknown, or its record expired)", "job_id"
        )
    return job


JobDep = Annotated[Job, Depends(get_job)]


_IDEMPOTENCY_RULES = (
    "Makes a retried submit safe: the same key with the same request returns the same job (`202`, "
    "header `Idempotent-Replayed: true`); with another request `422 idempotency_key_reused`; while "
    "the first request with it is still being processed `409 idempotency_key_in_use` (`Retry-After`). "
    "1 to 255 visible ASCII characters (else `422`); scoped to the API key; remembered for "
    "UNCLIP_IDEMPOTENCY_TTL_S (a day)."
)


def get_idempotency_key(
    idempotency_key: Annotated[
        str | None,
        Header(
            description=_IDEMPOTENCY_RULES,
            json_schema_extra={"minLength": 1, "maxLength": 255, "pattern": _IDEMPOTENCY_KEY.pattern},
        ),
    ] = None,
) -> str | None:
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.match(idempotency_key):
        raise ApiError(
            422,
            "invalid_parameter",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
            "Idempotency-Key",
        )
    return idempotency_key


IdempotencyKeyDep = Annotated[str | None, Depends(get_idempotency_key)]
