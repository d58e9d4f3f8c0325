"""Errors under ``/v1`` in OpenAI's shape, with the status codes the ``openai`` SDK maps.

The native routes answer ``{"error": {"code", "message", "param"}}`` (``service.errors``); a client
of the OpenAI API expects ``{"error": {"message", "type", "param", "code"}}`` and a 400 (not our
422) for a bad request, since the SDK turns 400 into ``BadRequestError``. Rather than a second
set of handlers, :func:`scope_openai_errors` wraps every handler the app has: under ``/v1`` the
native answer is rewritten (status, ``type``), elsewhere it goes out unchanged. Headers (such as
``Retry-After``, which the SDK honours between its retries) are kept.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

PREFIX = "/v1/"
# Native statuses that mean "the request is wrong": the SDK's BadRequestError is a 400.
_BAD_REQUEST = {413, 415, 422}
Handler = Callable[[Request, Any], Response | Awaitable[Response]]


def under_v1(request: Request) -> bool:
    return request.url.path.startswith(PREFIX) or request.url.path == PREFIX.rstrip("/")


def error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def openai_error(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """An answer in OpenAI's error shape (``extra`` fields ride along in ``error``)."""
    body = {"message": message, "type": error_type(status), "param": param, "code": code, **extra}
    return JSONResponse({"error": body}, status_code=status, headers=dict(headers or {}))


def to_openai(response: Response) -> Response:
    """A native error answer rewritten in OpenAI's shape (validation statuses become 400)."""
    try:
        native = json.loads(bytes(response.body))["error"]
    except (ValueError, KeyError, TypeError):
        return response
    if not isinstance(native, dict) or "type" in native:
        return response  # already OpenAI's
    status = 400 if response.status_code in _BAD_REQUEST else response.status_code
    headers = {
        name: value
        for name, value in response.headers.items()
        if name.lower() not in ("content-length", "content-type")
    }
    return openai_error(
        status,
        str(native.get("message", "")),
        code=native.get("code"),
        param=native.get("param"),
        headers=headers,
    )


def _scoped(handler: Handler) -> Handler:
    async def handle(request: Request, exc: Exception) -> Response:
        answer = handler(request, exc)
        response = await answer if inspect.isawaitable(answer) else answer
        return to_openai(response) if under_v1(request) else response

    return handle


def scope_openai_errors(app: FastAPI) -> None:
    """Wrap each exception handler registered so far: call it after ``install_error_handlers``.

    Answers written by a middleware without an exception handler (a body whose declared length
    is over the limit, a request past its time limit) keep the native shape.
    """
    for key, handler in list(app.exception_handlers.items()):
        app.exception_handlers[key] = _scoped(handler)
