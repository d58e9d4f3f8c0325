"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from contract.schemas import ErrorResponse, Health, Readiness
from service.deps import MetricsDep, RedisDep, SystemStoreDep
from service.errors import ApiError

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up (no dependency is checked)."""
    return Health()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": ErrorResponse}})
def readyz(redis: RedisDep, store: SystemStoreDep) -> Readiness:
    """Redis answers and at least one worker holds a current lease."""
    redis.ping()
    workers = store.live_workers()
    if workers == 0:
        raise ApiError(
            503, "no_workers", "Redis is reachable but no worker is alive", headers={"Retry-After": "5"}
        )
    return Readiness(status="ready", redis=True, workers=workers, queue_depth=store.queue_depth())


@router.get("/metrics", include_in_schema=False)
def metrics(metrics: MetricsDep, store: SystemStoreDep) -> Response:
    registry = metrics.scrape_registry(store.queue_depth)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
