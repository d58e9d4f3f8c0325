"""The FastAPI app: ``create_app()`` wires routers, error handlers, middleware and the lifespan.

The lifespan opens the Redis client (lazily connected: the app starts, and answers 503, while
Redis is down), starts the reaper thread (a dead worker's jobs are requeued even when no worker
is alive) and never loads a model: the workers own the model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from redis import Redis

from contract.jobs import JobStore
from contract.metrics import ApiMetrics
from contract.reaper import PeriodicThread, Reaper
from contract.settings import Settings, get_settings
from service.auth import authenticate
from service.errors import install_error_handlers
from service.middleware import (
    BodyLimitMiddleware,
    ErrorShapeCORSMiddleware,
    RequestMetricsMiddleware,
    RequestTimeoutMiddleware,
    cors_options,
)
from service.openai_errors import scope_openai_errors
from service.rate_limits import RateLimitHeadersMiddleware, request_limiter
from service.routes import events, generations, health, images, openai, playground

log = logging.getLogger("unclip.api")

# Include every router that serves clients with ``dependencies=AUTHENTICATED``: an API key (or a
# signed image URL) is then required on each of its routes. Only health and metrics are public.
AUTHENTICATED = [Depends(authenticate)]


def open_redis(settings: Settings) -> Redis:
    """A client with short timeouts, so a dead Redis is a quick 503 rather than a hung request."""
    return Redis.from_url(
        settings.redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    app.state.redis = open_redis(settings)
    app.state.request_limiter = request_limiter(app.state.redis)
    stop = threading.Event()
    if settings.reaper_interval_s > 0:
        # The only worker may die: its jobs go back to the queue without waiting for another.
        reaper = Reaper(JobStore(app.state.redis, settings, app.state.metrics))
        PeriodicThread("reaper", settings.reaper_interval_s, reaper.run_once, stop).start()
    if not settings.require_api_keys:
        log.warning(
            "API keys are OFF (UNCLIP_REQUIRE_API_KEYS=false): anyone who reaches this API can use it "
            "and read every job; for local development only"
        )
    try:
        yield
    finally:
        stop.set()
        app.state.redis.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API. ``settings`` (tests) replaces the environment (``service.app_settings``)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="unCLIP image generation",
        version="0.1.0",
        description="Text-to-image with the unCLIP (DALL-E 2) chain: submit a job, poll it, download PNGs.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = ApiMetrics.create()
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        multipart_max_bytes=settings.max_multipart_bytes,
    )
    app.add_middleware(
        RequestTimeoutMiddleware, timeout_s=settings.request_timeout_s, retry_after_s=settings.retry_after_s
    )
    app.add_middleware(RateLimitHeadersMiddleware)
    app.add_middleware(RequestMetricsMiddleware, metrics=app.state.metrics)
    if settings.cors_origins:  # off by default; outermost, so a preflight needs no API key
        app.add_middleware(ErrorShapeCORSMiddleware, **cors_options(settings.cors_origins))
    install_error_handlers(app)
    app.include_router(generations.router, dependencies=AUTHENTICATED)
    app.include_router(images.router, dependencies=AUTHENTICATED)
    app.include_router(events.router, dependencies=AUTHENTICATED)
    app.include_router(openai.router, dependencies=AUTHENTICATED)
    app.include_router(health.router)
    app.include_router(playground.router)  # the page is public; what it calls needs a key
    scope_openai_errors(app)  # last: under /v1, every handler's answer in OpenAI's shape
    return app
