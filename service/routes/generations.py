"""Submit, read, download and cancel generation jobs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from contract.jobs import public_status
from contract.schemas import ErrorResponse, GenerateRequest, JobPublic, JobStatus, JobStatusResponse
from service.app_settings import SettingsDep
from service.deps import IdempotencyKeyDep, JobDep, StorageDep, StoreDep
from service.errors import ApiError
from service.webhook_check import check_webhook

router = APIRouter(tags=["generations"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (404, 409, 413, 422, 429, 503)
}


@router.post("/generate", status_code=202, response_model=JobPublic, responses=_ERRORS)
def submit(
    body: GenerateRequest,
    request: Request,
    response: Response,
    store: StoreDep,
    settings: SettingsDep,
    key: IdempotencyKeyDep,
) -> JobStatusResponse:
    """Queue a generation; poll the ``Location`` it answers with."""
    check_webhook(body.webhook, settings)
    submission = store.submit_request(body, key)
    response.headers["Location"] = f"/jobs/{submission.job.id}"
    if submission.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return store.render(submission.job, str(request.base_url))


@router.get("/jobs/{job_id}", response_model=JobStatusResponse, responses=_ERRORS)
def read_job(job: JobDep, request: Request, store: StoreDep) -> JobStatusResponse:
    return store.render(job, str(request.base_url))


@router.get(
    "/jobs/{job_id}/images/{index}.png",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}}, **_ERRORS},
)
def read_image(job: JobDep, index: int, storage: StorageDep) -> FileResponse:
    status = public_status(job)
    if not status.is_terminal():
        raise ApiError(409, "job_not_finished", f"the job is {status.value}; images come when it succeeds")
    if status is not JobStatus.SUCCEEDED or not 0 <= index < int(job.meta.get("images", 0)):
        raise ApiError(404, "image_not_found", f"the job has no image {index}", "index")
    path = storage.path(job.id, index, job.meta.get("expires_at"))  # None once expired
    if path is None:
        raise ApiError(404, "result_expired", "the job's images expired and were deleted", "index")
    return FileResponse(path, media_type="image/png", filename=f"{job.id}-{index}.png")


@router.get(
    "/jobs/{job_id}/animation.{fmt}",
    response_class=FileResponse,
    responses={200: {"content": {"image/gif": {}, "image/webp": {}}}, **_ERRORS},
)
def read_animation(job: JobDep, fmt: str, storage: StorageDep) -> FileResponse:
    """An interpolation's frames as one looping animation (GIF or WebP, as asked at submit)."""
    status = public_status(job)
    if not status.is_terminal():
        raise ApiError(409, "job_not_finished", f"the job is {status.value}; images come when it succeeds")
    if status is not JobStatus.SUCCEEDED or job.meta.get("animation") != fmt:
        raise ApiError(404, "image_not_found", f"the job has no {fmt} animation", "fmt")
    path = storage.file(job.id, f"animation.{fmt}", job.meta.get("expires_at"))
    if path is None:
        raise ApiError(404, "result_expired", "the job's images expired and were deleted", "fmt")
    return FileResponse(path, media_type=f"image/{fmt}", filename=f"{job.id}.{fmt}")


_CANCEL_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"description": "the job was queued and is now canceled"},
    202: {
        "model": JobStatusResponse,
        "description": "the job is running: it is asked to stop at its next step "
        "(`cancel_requested: true`; poll the job for `canceled`)",
    },
    **_ERRORS,
}


@router.delete("/jobs/{job_id}", response_model=JobStatusResponse, responses=_CANCEL_ANSWERS)
@router.post("/jobs/{job_id}/cancel", response_model=JobStatusResponse, responses=_CANCEL_ANSWERS)
def cancel_job(job: JobDep, request: Request, response: Response, store: StoreDep) -> JobStatusResponse:
    """Cancel a queued job (200) or ask a running one to stop at its next step (202)."""
    outcome = store.cancel(job)
    response.status_code = 200 if outcome.status is JobStatus.CANCELED else 202
    job.refresh()  # type: ignore[no-untyped-call]
    return store.render(job, str(request.base_url))
