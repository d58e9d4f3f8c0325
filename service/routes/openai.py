"""The OpenAI-compatible Images API: thin adapters that run native jobs and wait for them.

``POST /v1/images/generations`` (JSON), ``/v1/images/variations`` and ``/v1/images/edits``
(multipart) submit a ``generate``, ``variation`` or ``edit`` job through the same path as the
native routes (admission, limits, idempotency), then poll its record until it is final and
answer ``{created, data: [{url | b64_json}]}``: absolute signed URLs that expire with the
result, or the PNGs inline. A job still running when the wait ends (``UNCLIP_OPENAI_WAIT_S``, and
always just under ``UNCLIP_REQUEST_TIMEOUT_S``) is answered ``504`` with its id, so the client can
poll ``GET /jobs/{id}``; the job goes on. Errors are in OpenAI's shape (``service.openai_errors``).
"""

from __future__ import annotations

import base64
import math
import time
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from rq.job import Job
from starlette.concurrency import run_in_threadpool

from contract.jobs import JobStore, public_status
from contract.schemas import JobStatus
from contract.settings import Settings
from contract.storage import ImageStorage
from contract.uploads import stored_png
from service.app_settings import SettingsDep
from service.deps import IdempotencyKeyDep, StorageDep, StoreDep
from service.errors import ApiError
from service.image_forms import (
    checked_image,
    edit_inputs,
    read_form,
    read_upload,
    submit_image_job,
    text_fields,
    validate_params,
)
from service.openai_errors import openai_error
from service.openai_schemas import (
    MODEL_ALIASES,
    SERVED_MODEL,
    EditForm,
    ImageData,
    ImageGenerationRequest,
    ImagesResponse,
    Model,
    ModelList,
    OpenAIErrorResponse,
    ResponseFormat,
    VariationForm,
)

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIErrorResponse} for code in (400, 401, 404, 409, 429, 500, 503, 504)
}
_MODELS_CREATED = 1764633600  # 2025-12-02, when the service first answered /v1
_OWNER = "unclip-service"
_FIRST_POLL_S, _MAX_POLL_S = 0.05, 0.5
# Statuses a failed job answers with: a refused input is the client's; the rest are ours.
_FAILURE_STATUS = {"invalid_input": 400}


def _multipart(files: dict[str, str], fields: dict[str, str]) -> dict[str, Any]:
    properties: dict[str, Any] = {
        name: {"type": "string", "format": "binary", "description": d} for name, d in files.items()
    }
    properties.update({name: {"type": "string", "description": d} for name, d in fields.items()})
    schema = {"type": "object", "required": list(files)[:1], "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


_FORM_FIELDS = {
    "n": "1-10",
    "size": "256x256 | 512x512 | 1024x1024 (default 1024x1024)",
    "response_format": "url | b64_json",
    "model": "unclip | dall-e-2",
    "user": "accepted, not stored",
    "seed": "extension: integer; omit for a random seed",
}


@router.get("/models", response_model=ModelList)
def list_models() -> ModelList:
    """The served model and the OpenAI name it also answers to."""
    return ModelList(data=[_model(name) for name in (SERVED_MODEL, *MODEL_ALIASES)])


@router.get("/models/{model_id}", response_model=Model, responses=_ERRORS)
def read_model(model_id: str) -> Model:
    if model_id not in (SERVED_MODEL, *MODEL_ALIASES):
        raise ApiError(404, "model_not_found", f"the model {model_id!r} does not exist", "model")
    return _model(model_id)


def _model(name: str) -> Model:
    return Model(id=name, created=_MODELS_CREATED, owned_by=_OWNER)


@router.post(
    "/images/generations",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
)
async def create_image(
    body: ImageGenerationRequest,
    request: Request,
    store: StoreDep,
    storage: StorageDep,
    settings: SettingsDep,
    key: IdempotencyKeyDep,
) -> Response | ImagesResponse:
    """Generate images from a prompt (a ``generate`` job), waiting for them."""
    submission = await run_in_threadpool(store.submit_request, body.to_generate(), key)
    return await _answer(submission.job, body.format, request, store, storage, settings)


@router.post(
    "/images/variations",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    openapi_extra=_multipart(
        {"image": "PNG, JPEG or WebP, at most 4 MB; centre-cropped square"}, _FORM_FIELDS
    ),
)
async def create_variation(
    request: Request, store: StoreDep, storage: StorageDep, settings: SettingsDep, key: IdempotencyKeyDep
) -> Response | ImagesResponse:
    """Variations of an image (a ``variation`` job: its CLIP embedding decoded with fresh noise)."""
    form = await read_form(request, settings)
    fields = validate_params(VariationForm, text_fields(form, ("image",)))
    image = checked_image(await read_upload(form, "image"), "image")
    inputs = {"image": stored_png(image.image)}
    submission = await run_in_threadpool(
        submit_image_job, fields.to_params(), inputs, store, storage, settings, key
    )
    return await _answer(submission.job, fields.format, request, store, storage, settings)


@router.post(
    "/images/edits",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    openapi_extra=_multipart(
        {
            "image": "square PNG; its transparent pixels mark where to edit unless a mask is given",
            "mask": "optional PNG of the image's size whose transparent pixels mark where to edit",
        },
        {"prompt": "what to draw in the masked region (required)", **_FORM_FIELDS},
    ),
)
async def create_edit(
    request: Request, store: StoreDep, storage: StorageDep, settings: SettingsDep, key: IdempotencyKeyDep
) -> Response | ImagesResponse:
    """Repaint the masked part of an image from a prompt (an ``edit`` job)."""
    form = await read_form(request, settings)
    fields = validate_params(EditForm, text_fields(form, ("image", "mask")))
    inputs = await edit_inputs(form)
    submission = await run_in_threadpool(
        submit_image_job, fields.to_params(), inputs, store, storage, settings, key
    )
    return await _answer(submission.job, fields.format, request, store, storage, settings)


def wait_limit_s(settings: Settings) -> float:
    """How long a /v1 call waits for its job: the setting, and always within the request's own
    time limit (the timeout middleware would answer for us, in the native shape, without the id)."""
    under_request_limit = max(1.0, settings.request_timeout_s - 2.0)
    return min(settings.openai_wait_s or math.inf, under_request_limit)


async def _wait(job: Job, timeout_s: float) -> bool:
    """Poll ``job``'s record until it is final (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    delay = _FIRST_POLL_S
    while True:
        await run_in_threadpool(job.refresh)
        if public_status(job).is_terminal():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        await anyio.sleep(min(delay, remaining))
        delay = min(delay * 1.5, _MAX_POLL_S)


async def _answer(
    job: Job,
    response_format: ResponseFormat,
    request: Request,
    store: JobStore,
    storage: ImageStorage,
    settings: Settings,
) -> Response | ImagesResponse:
    limit = wait_limit_s(settings)
    if not await _wait(job, limit):
        return openai_error(
            504,
            f"the job {job.id} did not finish within {limit:g} s; it goes on: poll GET /jobs/{job.id}",
            code="timeout",
            headers={"Location": f"/jobs/{job.id}", "x-should-retry": "false"},
            job_id=job.id,
        )
    status = public_status(job)
    if status is not JobStatus.SUCCEEDED:
        return _not_succeeded(job, status)
    record = await run_in_threadpool(store.render, job, str(request.base_url))
    if response_format == "url":
        data = [ImageData(url=link.url) for link in record.images]
    else:
        data = [
            ImageData(b64_json=await run_in_threadpool(_b64, storage, job, k))
            for k in range(len(record.images))
        ]
    return ImagesResponse(created=int(record.created_at), data=data)


def _not_succeeded(job: Job, status: JobStatus) -> JSONResponse:
    no_retry = {"x-should-retry": "false"}
    if status is JobStatus.CANCELED:
        return openai_error(
            409, f"the job {job.id} was canceled", code="job_canceled", headers=no_retry, job_id=job.id
        )
    error = job.meta.get("error") or {"code": "generation_failed", "message": "the job failed"}
    code = str(error.get("code", "generation_failed"))
    return openai_error(
        _FAILURE_STATUS.get(code, 500),
        f"the job {job.id} failed: {error.get('message', '')}",
        code=code,
        job_id=job.id,
    )


def _b64(storage: ImageStorage, job: Job, index: int) -> str:
    path = storage.path(job.id, index, job.meta.get("expires_at"))
    if path is None:
        raise ApiError(404, "result_expired", "the job's images expired and were deleted")
    return base64.b64encode(path.read_bytes()).decode()
