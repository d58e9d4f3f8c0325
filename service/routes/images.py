"""The image job kinds (variations, interpolations, text diffs, edits): multipart in, 202 out.

Each route reads the form (parts and sizes capped while the body streams, by the body-limit
middleware and Starlette's form limits), validates the fields with the kind's model
(``contract.image_jobs``), checks and normalises the uploads (``contract.uploads``), and submits
the job like ``POST /generate``: the same record, ``Location``, idempotency, cancel and webhook.
The uploads are stored for the worker just before the job is enqueued.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from contract.image_jobs import (
    EditParams,
    ImageJobKinds,
    InterpolationParams,
    TextDiffParams,
    VariationParams,
)
from contract.schemas import ErrorResponse, JobPublic, JobStatusResponse
from contract.settings import Settings
from contract.storage import ImageStorage
from contract.uploads import CheckedImage, UploadRefused, edit_mask, open_image, stored_png
from service.deps import IdempotencyKeyDep, SettingsDep, StorageDep, StoreDep
from service.errors import ApiError
from service.webhook_check import check_webhook

router = APIRouter(tags=["image jobs"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (404, 409, 413, 415, 422, 429, 503)
}
_MAX_FILES = 2  # the most file parts any route takes


def _multipart(description: str, files: Mapping[str, str], fields: Mapping[str, str]) -> dict[str, Any]:
    """OpenAPI for a multipart route whose fields are read by hand (the form is parsed once, with
    limits, instead of through FastAPI's per-field parameters)."""
    properties: dict[str, Any] = {
        name: {"type": "string", "format": "binary", "description": d} for name, d in files.items()
    }
    properties.update({name: {"type": "string", "description": d} for name, d in fields.items()})
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"multipart/form-data": {"schema": {"type": "object", "properties": properties}}},
        }
    }


_COMMON = {
    "size": "64x64 | 256x256 | 512x512 | 1024x1024 (default 256x256)",
    "seed": "integer; omit for a random seed",
    "webhook": "URL POSTed the job at its final state",
}


async def _form(request: Request, settings: Settings) -> FormData:
    """The form, parsed once: at most ``max_multipart_parts`` parts in all (413 ``too_many_parts``,
    refused while the body streams), of which at most two are files."""
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


def _fields(form: FormData, files: tuple[str, ...]) -> dict[str, Any]:
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


async def _upload(form: FormData, name: str) -> bytes | None:
    value = form.get(name)
    if value is None:
        return None
    assert isinstance(value, UploadFile)
    return await value.read()


def _validate(model: type[ImageJobKinds], values: dict[str, Any]) -> ImageJobKinds:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


def _checked(data: bytes | None, name: str, *, square: bool = False) -> CheckedImage:
    if data is None:
        raise ApiError(422, "missing_parameter", f"{name}: an image file is required", name)
    try:
        return open_image(data, name, square=square)
    except UploadRefused as refused:
        raise ApiError(refused.status, refused.code, refused.message, refused.param) from None


def _submit(  # in a thread: the webhook check resolves a name, the store talks to Redis
    params: ImageJobKinds,
    inputs: dict[str, bytes],
    request: Request,
    response: Response,
    store: StoreDep,
    storage: ImageStorage,
    settings: SettingsDep,
    key: str | None,
) -> JobStatusResponse:
    check_webhook(params.webhook, settings)
    digest = hashlib.sha256()
    digest.update(params.model_dump_json().encode())
    for name in sorted(inputs):
        digest.update(name.encode() + hashlib.sha256(inputs[name]).digest())
    expires_at = time.time() + settings.record_ttl_s

    def store_inputs(job_id: str) -> None:
        for name, png in inputs.items():
            storage.put_file(job_id, f"input-{name}.png", png, expires_at)

    submission = store.submit_request(
        params, key, fingerprint=digest.hexdigest(), before_enqueue=store_inputs
    )
    response.headers["Location"] = f"/jobs/{submission.job.id}"
    if submission.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return store.render(submission.job, str(request.base_url))


@router.post(
    "/variations",
    status_code=202,
    response_model=JobPublic,
    responses=_ERRORS,
    openapi_extra=_multipart(
        "variations of one image",
        {"image": "PNG, JPEG or WebP, at most 4 MB and 4096x4096; centre-cropped to a square"},
        {
            "n": "1-10",
            "mode": "embedding (fresh noise) | inversion (from the image's DDIM-inverted latent)",
            "strength": "inversion: 0 gives the image back, 1 a free variation (default 0.5)",
            "eta": "embedding mode: the decoder's DDIM eta, 0-1",
            **_COMMON,
        },
    ),
)
async def variations(
    request: Request,
    response: Response,
    store: StoreDep,
    storage: StorageDep,
    settings: SettingsDep,
    key: IdempotencyKeyDep,
) -> JobStatusResponse:
    """Variations of an image: its CLIP embedding decoded anew (Ramesh et al. 2022, §3.1)."""
    form = await _form(request, settings)
    params = _validate(VariationParams, _fields(form, ("image",)))
    image = _checked(await _upload(form, "image"), "image")
    return await run_in_threadpool(
        _submit, params, {"image": stored_png(image.image)}, request, response, store, storage, settings, key
    )


@router.post(
    "/interpolations",
    status_code=202,
    response_model=JobPublic,
    responses=_ERRORS,
    openapi_extra=_multipart(
        "frames between two ends, each an image or a prompt",
        {"image_a": "end A as an image", "image_b": "end B as an image"},
        {
            "prompt_a": "end A as a prompt",
            "prompt_b": "end B as a prompt",
            "steps": "frames, ends included: 2-16 (default 5)",
            "inversion": "true: decode from the slerped inverted latents (two images only)",
            "animation": "gif | webp",
            **_COMMON,
        },
    ),
)
async def interpolations(
    request: Request,
    response: Response,
    store: StoreDep,
    storage: StorageDep,
    settings: SettingsDep,
    key: IdempotencyKeyDep,
) -> JobStatusResponse:
    """Interpolate two ends in CLIP image-embedding space (§3.2); frames plus an animation."""
    form = await _form(request, settings)
    values = _fields(form, ("image_a", "image_b"))
    uploads = {name: await _upload(form, name) for name in ("image_a", "image_b")}
    values.update({name: data is not None for name, data in uploads.items()})
    params = _validate(InterpolationParams, values)
    inputs = {
        name: stored_png(_checked(data, name).image) for name, data in uploads.items() if data is not None
    }
    return await run_in_threadpool(_submit, params, inputs, request, response, store, storage, settings, key)


@router.post(
    "/text-diffs",
    status_code=202,
    response_model=JobPublic,
    responses=_ERRORS,
    openapi_extra=_multipart(
        "an image (or a prompt) moved along the difference of two captions",
        {"image": "the source image"},
        {
            "prompt": "the source as a prompt instead of an image",
            "base": "the caption describing the source",
            "target": "the caption to move towards",
            "angles": "one value per frame, 0-1; repeat the field (default 0, .125, .25, .375, .5)",
            **_COMMON,
        },
    ),
)
async def text_diffs(
    request: Request,
    response: Response,
    store: StoreDep,
    storage: StorageDep,
    settings: SettingsDep,
    key: IdempotencyKeyDep,
) -> JobStatusResponse:
    """A text diff (§3.3): frames rotating the image's embedding towards target - base."""
    form = await _form(request, settings)
    values = _fields(form, ("image",))
    if isinstance(values.get("angles"), str):
        values["angles"] = [a for a in values["angles"].replace(",", " ").split() if a]
    data = await _upload(form, "image")
    values["image"] = data is not None
    params = _validate(TextDiffParams, values)
    inputs = {"image": stored_png(_checked(data, "image").image)} if data is not None else {}
    return await run_in_threadpool(_submit, params, inputs, request, response, store, storage, settings, key)


@router.post(
    "/edits",
    status_code=202,
    response_model=JobPublic,
    responses=_ERRORS,
    openapi_extra=_multipart(
        "repaint part of an image from a prompt",
        {
            "image": "square PNG, JPEG or WebP; its transparent pixels mark where to edit unless a mask is given",
            "mask": "optional PNG of the image's size: transparent (or, without alpha, white) = edit",
        },
        {"prompt": "what to draw in the masked region", "n": "1-10", **_COMMON},
    ),
)
async def edits(
    request: Request,
    response: Response,
    store: StoreDep,
    storage: StorageDep,
    settings: SettingsDep,
    key: IdempotencyKeyDep,
) -> JobStatusResponse:
    """Masked sampling: the prompt drawn where the mask says, the source kept elsewhere."""
    form = await _form(request, settings)
    params = _validate(EditParams, _fields(form, ("image", "mask")))
    image = _checked(await _upload(form, "image"), "image", square=True)
    mask_data = await _upload(form, "mask")
    mask = _checked(mask_data, "mask", square=True) if mask_data is not None else None
    try:
        mask_png = edit_mask(image, mask)
    except UploadRefused as refused:
        raise ApiError(refused.status, refused.code, refused.message, refused.param) from None
    inputs = {"image": stored_png(image.image), "mask": mask_png}
    return await run_in_threadpool(_submit, params, inputs, request, response, store, storage, settings, key)
