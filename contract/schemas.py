"""Request and response models of the HTTP API.

``GenerateRequest`` is what a client sends (the "Create" model); ``JobPublic`` is the answer to
a submit and ``JobStatusResponse`` the full record read back; ``ErrorResponse`` is the one error
shape. ``GenerateRequest.sampling_overrides`` hands the optional per-stage overrides to the worker,
which applies them to the loaded model's sampling defaults.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contract.fields import DIFFUSION_STAGES as DIFFUSION_STAGES
from contract.fields import MAX_SEED as MAX_SEED
from contract.fields import SIZES as SIZES
from contract.fields import SizeName as SizeName
from contract.fields import WebhookUrl as WebhookUrl
from contract.image_jobs import ImageJobKinds, JobKind


def fingerprint(request: BaseModel) -> str:
    """A digest of a request as sent (canonical JSON), for matching an ``Idempotency-Key`` replay:
    the same for every job kind."""
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class JobStatus(StrEnum):
    """A job's state as clients see it."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    def is_terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


class StepOverrides(BaseModel):
    """Sampling steps per stage; each bound keeps one request from holding a GPU for minutes."""

    model_config = ConfigDict(extra="forbid")

    prior: int | None = Field(default=None, ge=1, le=64, strict=True)
    decoder: int | None = Field(default=None, ge=1, le=250, strict=True)
    sr256: int | None = Field(default=None, ge=1, le=50, strict=True)
    sr1024: int | None = Field(default=None, ge=1, le=50, strict=True)


class GuidanceOverrides(BaseModel):
    """Classifier-free guidance scale of the text-conditioned stages (1.0 means none). A JSON
    number (an integer is fine); a numeric string is refused, as for ``n``, ``seed`` and ``steps``."""

    model_config = ConfigDict(extra="forbid")

    prior: float | None = Field(default=None, ge=0.0, le=20.0, allow_inf_nan=False, strict=True)
    decoder: float | None = Field(default=None, ge=0.0, le=20.0, allow_inf_nan=False, strict=True)


class GenerateRequest(BaseModel):
    """Body of ``POST /generate``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"prompt": "a corgi playing a trumpet", "n": 2, "size": "256x256"}]},
    )

    prompt: str = Field(min_length=1, max_length=1000, description="the caption to draw")
    n: int = Field(default=1, ge=1, le=10, strict=True, description="images to generate")
    size: SizeName = Field(default="256x256", description="64x64 is a preview (decoder output only)")
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        strict=True,
        description="omit for a random seed (returned in the job)",
    )
    steps: StepOverrides | None = None
    guidance: GuidanceOverrides | None = None
    webhook: WebhookUrl | None = Field(
        default=None, description="POSTed the job when it reaches a final state"
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must contain non-whitespace characters")
        if "\x00" in value:
            raise ValueError("prompt must not contain NUL characters")
        return value

    @property
    def side(self) -> int:
        return SIZES[self.size]

    def sampling_overrides(self) -> dict[str, dict[str, int | float | None]]:
        """``{stage: {"steps": ..., "guidance": ...}}`` as asked (None: the model's default).

        The worker applies them to the loaded model's defaults
        (``models.configs.SamplingConfig.with_overrides``): the API never loads a model.
        """
        return {
            stage: {
                "steps": getattr(self.steps, stage, None) if self.steps else None,
                "guidance": getattr(self.guidance, stage, None) if self.guidance else None,
            }
            for stage in DIFFUSION_STAGES
        }

    def fingerprint(self) -> str:
        """A digest of the request as sent, for matching an ``Idempotency-Key`` replay."""
        return fingerprint(self)


class StageParams(BaseModel):
    steps: int
    guidance: float
    sampler: str


class JobParams(BaseModel):
    """The request as accepted, with the seed filled in (``steps``/``guidance``: the overrides;
    the settings actually sampled are in ``JobStatusResponse.sampling`` once a worker starts it)."""

    kind: Literal["generate"] = "generate"
    prompt: str
    n: int
    size: SizeName
    seed: int
    steps: StepOverrides | None = None
    guidance: GuidanceOverrides | None = None
    webhook: str | None = None


class Progress(BaseModel):
    stage: str
    step: int
    total: int
    fraction: float = Field(ge=0.0, le=1.0, description="of the whole chain of stages")


class JobErrorInfo(BaseModel):
    code: str
    message: str


class ImageLink(BaseModel):
    index: int
    url: str


class JobPublic(BaseModel):
    """The answer to a submit: enough to poll (``Location``) and to reproduce (``params.seed``)."""

    id: str
    object: Literal["generation.job"] = "generation.job"
    kind: JobKind = Field(default=JobKind.GENERATE, description="what the job makes")
    status: JobStatus
    created_at: float = Field(description="unix seconds")
    params: JobParams | ImageJobKinds = Field(discriminator="kind")
    queue_position: int | None = Field(default=None, description="1 = next to start; while queued")


class JobStatusResponse(JobPublic):
    """The full record of ``GET /jobs/{id}``."""

    progress: Progress | None = None
    sampling: dict[str, StageParams] | None = Field(default=None, description="as sampled, per stage")
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per stage of the batch")
    images: list[ImageLink] = Field(default_factory=list)
    animation: str | None = Field(default=None, description="an interpolation's frames as one GIF/WebP")
    error: JobErrorInfo | None = None
    cancel_requested: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = Field(default=None, description="unix seconds after which images are gone")
    attempts: int = Field(default=0, description="times the job was restarted after its worker died")
    batch_size: int | None = Field(default=None, description="images sampled together with this job's")


class ErrorBody(BaseModel):
    code: str
    message: str
    param: str | None = None


class ErrorResponse(BaseModel):
    """The one error shape of every non-2xx answer."""

    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    redis: bool
    workers: int
    queue_depth: int | None = None
