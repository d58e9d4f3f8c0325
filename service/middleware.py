"""Pure ASGI middlewares: the request-body limit, the request time limit, CORS in the error shape
and the HTTP request counter.

Pure ASGI (not ``BaseHTTPMiddleware``): a body over the limit is refused before anything buffers
it, a request past its time limit is answered while the handler may still be running, and the
status code is read from the response as it is sent, so answers written by the exception
handlers are counted too.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.metrics import ApiMetrics
from service.errors import error_response

log = logging.getLogger("unclip.api")


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``: at once when ``Content-Length`` says so, else as soon as
    the streamed body passes the limit (raised as an ``HTTPException``, which FastAPI hands to
    the error handlers, so the answer keeps the one error shape)."""

    def __init__(self, app: ASGIApp, max_bytes: int, multipart_max_bytes: int | None = None):
        self.app = app
        self.max_bytes = max_bytes
        # Uploads (multipart bodies) get their own, larger limit; everything else stays small.
        self.multipart_max_bytes = multipart_max_bytes or max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.multipart_max_bytes if _is_multipart(scope) else self.max_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(send, limit)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, self._message(limit))
            return message

        await self.app(scope, limited_receive, send)

    @staticmethod
    def _message(limit: int) -> str:
        return f"request body is larger than {limit} bytes"

    async def _refuse(self, send: Send, limit: int) -> None:
        body = json.dumps(
            {"error": {"code": "request_too_large", "message": self._message(limit), "param": None}}
        )
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body.encode()})


def _is_multipart(scope: Scope) -> bool:
    return any(
        name == b"content-type" and value.lower().startswith(b"multipart/form-data")
        for name, value in scope.get("headers", [])
    )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class RequestMetricsMiddleware:
    """Counts ``unclip_http_requests_total{route, method, status}`` by route *template*
    (``/jobs/{job_id}``, never the id itself); unmatched paths count as ``unmatched``."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.http_requests.labels(template, scope.get("method", "?"), str(status)).inc()


class RequestTimeoutMiddleware:
    """A request whose response has not started within ``timeout_s`` is answered for its handler:
    408 ``request_timeout`` while the body is still arriving (a slow client; the connection is
    closed after it), else 503 ``server_timeout`` with ``Retry-After`` (the handler is slow, e.g.
    Redis hangs). The handler is cancelled; one running in a thread (FastAPI's sync routes) cannot
    be stopped and finishes unheard, so a submit that timed out may still have been queued: retry
    it with the same ``Idempotency-Key``. A response that has started (a file, an event stream) is
    never cut."""

    def __init__(self, app: ASGIApp, timeout_s: float, retry_after_s: int):
        self.app = app
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = asyncio.Event()
        answered = False  # set once this middleware has answered: the handler's sends go nowhere
        reading = False  # the handler waits for the next piece of the body

        async def timed_receive() -> Message:
            nonlocal reading
            reading = True
            try:
                return await receive()
            finally:
                reading = False

        async def timed_send(message: Message) -> None:
            if answered:
                return
            if message["type"] == "http.response.start":
                started.set()
            await send(message)

        handler = asyncio.ensure_future(self.app(scope, timed_receive, timed_send))
        response_started = asyncio.ensure_future(started.wait())
        try:
            await asyncio.wait(
                {handler, response_started}, timeout=self.timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:  # the server is stopping this request
            handler.cancel()
            raise
        finally:
            response_started.cancel()
        if handler.done() or started.is_set():
            await handler  # the handler's answer streams on; its exception, if any, is raised as is
            return
        answered = True
        handler.cancel()
        handler.add_done_callback(_forget)
        await self._answer(scope, receive, send, slow_client=reading)

    async def _answer(self, scope: Scope, receive: Receive, send: Send, slow_client: bool) -> None:
        limit = f"{self.timeout_s:g} s"
        if slow_client:
            response = error_response(
                408,
                "request_timeout",
                f"the request body did not arrive within {limit}",
                headers={"Connection": "close"},
            )
        else:
            response = error_response(
                503,
                "server_timeout",
                f"the server did not answer within {limit}; retry later (a submit retried with the "
                "same Idempotency-Key cannot make a second job)",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        log.warning("%s %s: %d after %s", scope.get("method"), scope.get("path"), response.status_code, limit)
        await response(scope, receive, send)


def _forget(handler: asyncio.Future[None]) -> None:
    """Collect the outcome of a handler that was answered for (so asyncio does not warn of an
    exception never retrieved)."""
    if not handler.cancelled() and handler.exception() is not None:
        log.debug("a handler answered for by the time limit raised", exc_info=handler.exception())


class ErrorShapeCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware, with a refused preflight (an origin or method not allowed)
    answered in the one error shape, ``400 cors_not_allowed``, instead of plain text."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        reason = bytes(response.body).decode(errors="replace")
        headers = {
            name: value
            for name, value in response.headers.items()
            if name.lower().startswith("access-control-") or name.lower() == "vary"
        }
        return error_response(
            400,
            "cors_not_allowed",
            f"{reason} (the allowed origins are UNCLIP_CORS_ORIGINS)",
            headers=headers,
        )


def cors_options(origins: list[str]) -> dict[str, Any]:
    """CORS for ``origins``: the API's methods, any request header (bearer tokens, not cookies:
    no credentials), and the answer headers a browser client needs to read."""
    return {
        "allow_origins": origins,
        "allow_methods": ["GET", "POST", "DELETE"],
        "allow_headers": ["*"],
        "allow_credentials": False,
        "expose_headers": [
            "Location",
            "Retry-After",
            "Idempotent-Replayed",
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ],
        "max_age": 600,
    }
