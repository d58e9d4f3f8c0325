"""The one error shape, ``{"error": {"code", "message", "param"}}``, and a handler per error type.

Every non-2xx answer goes through here: our own :class:`ApiError`, the job store's errors (429
queue full, 409 already final, 422/409 idempotency key), FastAPI's request validation (422,
malformed JSON included), Starlette's HTTP errors (unknown route 404, 405, 413 body too large),
Redis being unreachable (503) and, last, anything unexpected (500, logged; never caused by input).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from contract.admission import Refused
from contract.jobs import IdempotencyKeyInFlight, IdempotencyKeyReused, JobConflict, QueueFull

log = logging.getLogger("unclip.api")

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "request_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An error answer: status, machine-readable code, human message, offending parameter."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = dict(headers or {})


def error_response(
    status: int, code: str, message: str, param: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "param": param}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


async def handle_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.param, exc.headers)


def _param(loc: Sequence[Any]) -> str | None:
    """``("body", "steps", "decoder")`` → ``"steps.decoder"``; ``("header", "idempotency-key")`` → the header."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or None


async def handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "value_error"}
    if first.get("type") == "json_invalid":
        return error_response(422, "invalid_json", f"request body is not valid JSON: {first.get('msg')}")
    param = _param(first.get("loc", ()))
    message = str(first.get("msg", "invalid value"))
    if param is None and first.get("type") in ("model_attributes_type", "dict_type", "missing"):
        message = "the request body must be a JSON object sent with Content-Type: application/json"
    if param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    code = "missing_parameter" if first.get("type") == "missing" else "invalid_parameter"
    return error_response(422, code, message, param)


async def handle_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
        # FastAPI answers 400 to a body it cannot decode (bad UTF-8): same class as bad JSON.
        return error_response(422, "invalid_json", f"request body is not valid JSON: {exc.__cause__}")
    if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
        # ... and to JSON nested deeper than the parser's recursion limit.
        return error_response(422, "invalid_json", "request body is JSON nested too deeply to parse")
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    headers = dict(exc.headers or {})
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route for {request.method} {request.url.path}"
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
        message = f"{request.method} is not allowed on {request.url.path}; allowed: {headers['Allow']}"
    return error_response(exc.status_code, code, message, headers=headers)


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's 405 names only the first route
    that matches the path: ``GET`` for ``/jobs/{id}``, which also answers ``DELETE``). Asked of
    each route through ``matches``, so routes inside included routers count too."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]


async def handle_queue_full(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueueFull)
    retry_after = str(request.app.state.settings.retry_after_s)
    return error_response(429, "queue_full", str(exc), headers={"Retry-After": retry_after})


async def handle_key_limit(request: Request, exc: Exception) -> JSONResponse:
    """A key's unfinished jobs or images per minute are spent (checked where the job is enqueued)."""
    assert isinstance(exc, Refused)
    retry_after = exc.retry_after_s or request.app.state.settings.retry_after_s
    return error_response(429, exc.code, exc.message, headers={"Retry-After": str(retry_after)})


async def handle_job_conflict(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, JobConflict)
    return error_response(
        409, "job_already_final", f"the job already {exc.status.value}; it cannot be canceled"
    )


async def handle_idempotency_reused(request: Request, exc: Exception) -> JSONResponse:
    # 422, as the IETF Idempotency-Key draft says: the key is fine, this body does not match it.
    message = "this Idempotency-Key was already used with a different request body; use a new key"
    return error_response(422, "idempotency_key_reused", message, "Idempotency-Key")


async def handle_idempotency_in_flight(request: Request, exc: Exception) -> JSONResponse:
    message = "a request with this Idempotency-Key is still being processed; retry shortly"
    return error_response(409, "idempotency_key_in_use", message, "Idempotency-Key", {"Retry-After": "1"})


async def handle_redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unavailable: %s", exc)
    retry_after = str(request.app.state.settings.retry_after_s)
    return error_response(
        503,
        "redis_unavailable",
        "the job queue is unreachable; retry later",
        headers={"Retry-After": retry_after},
    )


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, handle_api_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(QueueFull, handle_queue_full)
    app.add_exception_handler(Refused, handle_key_limit)
    app.add_exception_handler(JobConflict, handle_job_conflict)
    app.add_exception_handler(IdempotencyKeyReused, handle_idempotency_reused)
    app.add_exception_handler(IdempotencyKeyInFlight, handle_idempotency_in_flight)
    app.add_exception_handler(redis.exceptions.ConnectionError, handle_redis_unavailable)
    app.add_exception_handler(redis.exceptions.TimeoutError, handle_redis_unavailable)
    app.add_exception_handler(Exception, handle_unexpected)
