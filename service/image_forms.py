"""Reading an image job's multipart form and submitting the job: shared by the native image
routes (``service.routes.images``) and the OpenAI-compatible ones (``service.routes.openai``).

The form is parsed once, with limits (parts and sizes capped while the body streams, by the
body-limit middleware and Starlette's form limits); its text fields are validated by the kind's
model (``contract.image_jobs``), its uploads checked and normalised (``contract.uploads``), and
the job submitted like ``POST /generate``: the same record, idempotency, cancel and webhook. The
uploads are stored for the worker just before the job is enqueued.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile

from contract.image_jobs import ImageJobKinds
from contract.jobs import JobStore, Submission
from contract.settings import Settings
from contract.storage import ImageStorage
from contract.uploads import CheckedImage, UploadRefused, edit_mask, open_image, stored_png
from service.errors import ApiError
from service.webhook_check import check_webhook

_MAX_FILES = 2  # the most file parts any route takes
Params = TypeVar("Params", bound=BaseModel)


async def read_form(request: Request, settings: Settings) -> FormData:
    """The form, parsed once: 415 for another content type, 422 ``invalid_multipart`` for a
    malformed body, at most ``max_multipart_parts`` parts in all (413 ``too_many_parts``, refused
    while the body streams), of which at most two are files; 413 past the size limit."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data (the image as a file part)")
    limit = settings.max_multipart_parts
    too_many = ApiError(413, "too_many_parts", f"a multipart body may have at most {limit} parts")
    try:
        form = await request.form(max_files=min(_MAX_FILES, limit), max_fields=limit)
    except Exception as exc:  # malformed multipart, too many parts: Starlette raises several types
        status = getattr(exc, "status_code", 400)
        detail = getattr(exc, "detail", None) or str(exc) or "malformed multipart body"
        if status == 413:
            raise
        if str(detail).startswith("Too many files"):
            raise ApiError(
                413, "too_many_parts", f"a multipart body may have at most {_MAX_FILES} files"
            ) from None
        if str(detail).startswith("Too many fields"):
            raise too_many from None
        raise ApiError(
            422 if status < 500 else 400, "invalid_multipart", f"multipart body: {detail}"
        ) from None
    if len(form.multi_items()) > limit:  # files and fields are counted apart while parsing
        await form.close()
        raise too_many
    return form


def text_fields(form: FormData, files: tuple[str, ...]) -> dict[str, Any]:
    """The text fields (repeated ones, such as ``angles``, as lists); file parts other than the
    route's own are refused, as are text values sent where a file is expected."""
    values: dict[str, Any] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name not in files:
                raise ApiError(422, "invalid_parameter", f"{name}: unexpected file part", name)
            continue
        if name in files:
            raise ApiError(422, "invalid_parameter", f"{name}: must be a file part, not text", name)
        if name in values:
            values[name] = [*values[name], value] if isinstance(values[name], list) else [values[name], value]
        else:
            values[name] = value
    return values


async def read_upload(form: FormData, name: str) -> bytes | None:
    value = form.get(name)
    if value is None:
        return None
    assert isinstance(value, UploadFile)  # text_fields refused text sent as a file's name
    return await value.read()


def validate_params(model: type[Params], values: dict[str, Any]) -> Params:
    """``values`` as ``model``; a refusal is answered like a bad JSON body (422, or 400 under /v1)."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


def checked_image(data: bytes | None, name: str, *, square: bool = False) -> CheckedImage:
    if data is None:
        raise ApiError(422, "missing_parameter", f"{name}: an image file is required", name)
    try:
        return open_image(data, name, square=square)
    except UploadRefused as refused:
        raise ApiError(refused.status, refused.code, refused.message, refused.param) from None


async def edit_inputs(form: FormData) -> dict[str, bytes]:
    """An edit's stored inputs: the square image and its repaint mask (from the ``mask`` part,
    else from the image's own transparency)."""
    image = checked_image(await read_upload(form, "image"), "image", square=True)
    mask_data = await read_upload(form, "mask")
    mask = checked_image(mask_data, "mask", square=True) if mask_data is not None else None
    try:
        mask_png = edit_mask(image, mask)
    except UploadRefused as refused:
        raise ApiError(refused.status, refused.code, refused.message, refused.param) from None
    return {"image": stored_png(image.image), "mask": mask_png}


def submit_image_job(
    params: ImageJobKinds,
    inputs: dict[str, bytes],
    store: JobStore,
    storage: ImageStorage,
    settings: Settings,
    idempotency_key: str | None,
) -> Submission:
    """Submit an image job; its uploads count in the ``Idempotency-Key`` fingerprint and are
    stored (with the record's expiry) just before the enqueue."""
    check_webhook(params.webhook, settings)
    digest = hashlib.sha256()
    digest.update(params.model_dump_json().encode())
    for name in sorted(inputs):
        digest.update(name.encode() + hashlib.sha256(inputs[name]).digest())
    expires_at = time.time() + settings.record_ttl_s

    def store_inputs(job_id: str) -> None:
        for name, png in inputs.items():
            storage.put_file(job_id, f"input-{name}.png", png, expires_at)

    return store.submit_request(
        params, idempotency_key, fingerprint=digest.hexdigest(), before_enqueue=store_inputs
    )
