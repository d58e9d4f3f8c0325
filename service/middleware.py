"""Two pure ASGI middlewares: the request-body limit and the HTTP request counter.

Pure ASGI (not ``BaseHTTPMiddleware``): a body over the limit is refused before anything buffers
it, and the status code is read from the response as it is sent, so answers written by the
exception handlers are counted too.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.metrics import ApiMetrics


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
