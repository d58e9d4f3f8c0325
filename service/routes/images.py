"""The image job kinds (variations, interpolations, text diffs, edits): multipart in, 202 out.

Each route reads the form, validates the fields with the kind's model (``contract.image_jobs``),
checks and normalises the uploads (``contract.uploads``), and submits the job like ``POST
/generate``: the same record, ``Location``, idempotency, cancel and webhook. The steps live in
``service.image_forms``, shared with the OpenAI-compatible routes (``service.routes.openai``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from contract.image_jobs import (
    EditParams,
    ImageJobKinds,
    InterpolationParams,
    TextDiffParams,
    VariationParams,
)
from contract.jobs import JobStore
from contract.schemas import ErrorResponse, JobPublic, JobStatusResponse
from contract.settings import Settings
from contract.storage import ImageStorage
from contract.uploads import stored_png
from service.app_settings import SettingsDep
from service.deps import IdempotencyKeyDep, StorageDep, StoreDep
from service.image_forms import (
    checked_image,
    edit_inputs,
    read_form,
    read_upload,
    submit_image_job,
    text_fields,
    validate_params,
)

router = APIRouter(tags=["image jobs"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (404, 409, 413, 415, 422, 429, 503)
}


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


@dataclass(frozen=True)
class Submitter:
    """What every image route needs to read its form and submit its job (one dependency instead
    of six parameters per route)."""

    request: Request
    response: Response
    store: JobStore
    storage: ImageStorage
    settings: Settings
    key: str | None

    async def __call__(self, params: ImageJobKinds, inputs: dict[str, bytes]) -> JobStatusResponse:
        # In a thread: the webhook check resolves a name, the store talks to Redis.
        return await run_in_threadpool(self._submit, params, inputs)

    def _submit(self, params: ImageJobKinds, inputs: dict[str, bytes]) -> JobStatusResponse:
        submission = submit_image_job(params, inputs, self.store, self.storage, self.settings, self.key)
        self.response.headers["Location"] = f"/jobs/{submission.job.id}"
        if submission.replayed:
            self.response.headers["Idempotent-Replayed"] = "true"
        return self.store.render(submission.job, str(self.request.base_url))


def _submitter(
    request: Request,
    response: Response,
    store: StoreDep,
    storage: StorageDep,
    settings: SettingsDep,
    key: IdempotencyKeyDep,
) -> Submitter:
    return Submitter(request, response, store, storage, settings, key)


SubmitDep = Annotated[Submitter, Depends(_submitter)]


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
async def variations(submit: SubmitDep) -> JobStatusResponse:
    """Variations of an image: its CLIP embedding decoded anew (Ramesh et al. 2022, §3.1)."""
    form = await read_form(submit.request, submit.settings)
    params = validate_params(VariationParams, text_fields(form, ("image",)))
    image = checked_image(await read_upload(form, "image"), "image")
    return await submit(params, {"image": stored_png(image.image)})


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
async def interpolations(submit: SubmitDep) -> JobStatusResponse:
    """Interpolate two ends in CLIP image-embedding space (§3.2); frames plus an animation."""
    form = await read_form(submit.request, submit.settings)
    values = text_fields(form, ("image_a", "image_b"))
    uploads = {name: await read_upload(form, name) for name in ("image_a", "image_b")}
    values.update({name: data is not None for name, data in uploads.items()})
    params = validate_params(InterpolationParams, values)
    inputs = {
        name: stored_png(checked_image(data, name).image)
        for name, data in uploads.items()
        if data is not None
    }
    return await submit(params, inputs)


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
async def text_diffs(submit: SubmitDep) -> JobStatusResponse:
    """A text diff (§3.3): frames rotating the image's embedding towards target - base."""
    form = await read_form(submit.request, submit.settings)
    values = text_fields(form, ("image",))
    if isinstance(values.get("angles"), str):
        values["angles"] = [a for a in values["angles"].replace(",", " ").split() if a]
    data = await read_upload(form, "image")
    values["image"] = data is not None
    params = validate_params(TextDiffParams, values)
    inputs = {"image": stored_png(checked_image(data, "image").image)} if data is not None else {}
    return await submit(params, inputs)


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
async def edits(submit: SubmitDep) -> JobStatusResponse:
    """Masked sampling: the prompt drawn where the mask says, the source kept elsewhere."""
    form = await read_form(submit.request, submit.settings)
    params = validate_params(EditParams, text_fields(form, ("image", "mask")))
    inputs = await edit_inputs(form)
    return await submit(params, inputs)
