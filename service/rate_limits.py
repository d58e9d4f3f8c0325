"""Per-key request rate, shared by every API process through Redis, and the headers that say it.

Requests per minute use the ``limits`` library's moving window on Redis (one Lua call per hit,
so concurrent API processes never let more through than the limit). Images per minute and the
cap on a key's unfinished jobs are checked where the job is enqueued, in the same Lua script
(``contract.enqueue``), so a refused submit counts nothing.

The ``x-ratelimit-*`` headers (the OpenAI API's names) ride on every answer to a keyed request:
the dependency leaves them in ``request.state`` and :class:`RateLimitHeadersMiddleware` adds them
to whatever response goes out, errors and files included.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from limits import RateLimitItemPerMinute
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from redis import Redis
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.settings import Settings
from service.errors import ApiError

if TYPE_CHECKING:
    from contract.api_keys import ApiKey

_STATE = "rate_limit_headers"


def request_limiter(redis: Redis) -> MovingWindowRateLimiter:
    """A limiter on the API's own Redis connection pool (short timeouts: Redis down is a 503)."""
    return MovingWindowRateLimiter(RedisStorage("redis://", connection_pool=redis.connection_pool))


def reset_header(seconds: float) -> str:
    """The OpenAI API's duration format: ``1s``, ``42s``, ``1m5s``."""
    whole = max(0, math.ceil(seconds))
    return f"{whole // 60}m{whole % 60}s" if whole >= 60 else f"{whole}s"


def check_request_rate(request: Request, settings: Settings, key: ApiKey) -> None:
    """Count this request against ``key``'s requests per minute; 429 once it is spent."""
    limiter: MovingWindowRateLimiter = request.app.state.request_limiter
    limit = key.requests_per_minute or settings.key_requests_per_minute
    item = RateLimitItemPerMinute(limit, namespace=f"{settings.key_prefix}:rpm")
    allowed = limiter.hit(item, key.id)
    stats = limiter.get_window_stats(item, key.id)
    reset_s = max(0.0, stats.reset_time - time.time())
    headers = {
        "x-ratelimit-limit-requests": str(limit),
        "x-ratelimit-remaining-requests": str(stats.remaining),
        "x-ratelimit-reset-requests": reset_header(reset_s),
    }
    request.state.rate_limit_headers = headers
    if not allowed:
        raise ApiError(
            429,
            "rate_limited",
            f"this key may make {limit} requests a minute; retry after the reset",
            headers={**headers, "Retry-After": str(max(1, math.ceil(reset_s)))},
        )


class RateLimitHeadersMiddleware:
    """Adds the headers :func:`check_request_rate` left in the request's state to its response."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = scope.get("state", {}).get(_STATE)
                if extra:
                    headers = MutableHeaders(scope=message)
                    for name, value in extra.items():
                        if name not in headers:
                            headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
