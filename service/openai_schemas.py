"""Request and response models of the OpenAI-compatible Images API (``/v1``, model ``dall-e-2``).

What the ``openai`` SDKs send and read (docs/api.md, "OpenAI-compatible API"): a generation body,
the multipart fields of variations and edits, ``{created, data: [{url | b64_json}]}``, the model
list and the error shape ``{"error": {"message", "type", "param", "code"}}``. Our extensions
(``seed``, ``steps``, ``guidance``) arrive as extra body fields (the SDK's ``extra_body=``). Each
request converts itself to the native job it runs as (``contract.schemas``, ``contract.image_jobs``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contract.fields import MAX_SEED
from contract.image_jobs import EditParams, VariationParams
from contract.schemas import GenerateRequest, GuidanceOverrides, StepOverrides

# The model we serve, and the OpenAI name it answers to (apps that hard-code dall-e-2 keep working).
SERVED_MODEL = "unclip"
MODEL_ALIASES = ("dall-e-2",)
MODEL_IDS = (SERVED_MODEL, *MODEL_ALIASES)
ModelId = Literal["unclip", "dall-e-2"]
OpenAISize = Literal["256x256", "512x512", "1024x1024"]  # dall-e-2's sizes; 64x64 is native only
ResponseFormat = Literal["url", "b64_json"]


class OpenAIFields(BaseModel):
    """What every /v1 image request may carry besides its own fields."""

    model_config = ConfigDict(extra="forbid")

    model: ModelId | None = Field(default=None, description="unclip, or its alias dall-e-2")
    n: int | None = Field(default=1, ge=1, le=10)
    size: OpenAISize | None = Field(default="1024x1024", description="OpenAI's default: 1024x1024")
    response_format: ResponseFormat | None = Field(
        default="url", description="url (signed, expiring) | b64_json"
    )
    user: str | None = Field(default=None, max_length=256, description="accepted, not stored")
    safety_identifier: str | None = Field(default=None, max_length=256, description="accepted, not stored")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="extension: omit for a random seed")

    @property
    def images(self) -> int:
        return self.n or 1

    @property
    def output_size(self) -> OpenAISize:
        return self.size or "1024x1024"

    @property
    def format(self) -> ResponseFormat:
        return self.response_format or "url"


def _has_text(value: str) -> str:
    if not value.strip() or "\x00" in value:
        raise ValueError("must contain non-whitespace characters and no NUL")
    return value


class ImageGenerationRequest(OpenAIFields):
    """Body of ``POST /v1/images/generations``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"prompt": "a red circle", "size": "256x256", "response_format": "url"}]
        },
    )

    prompt: str = Field(min_length=1, max_length=1000)
    n: int | None = Field(default=1, ge=1, le=10, strict=True)
    quality: Literal["standard", "auto"] | None = Field(default=None, description="dall-e-2 has one quality")
    output_format: Literal["png"] | None = None
    steps: StepOverrides | None = Field(default=None, description="extension: sampling steps per stage")
    guidance: GuidanceOverrides | None = Field(default=None, description="extension: guidance per stage")

    _text = field_validator("prompt")(_has_text)

    def to_generate(self) -> GenerateRequest:
        return GenerateRequest(
            prompt=self.prompt,
            n=self.images,
            size=self.output_size,
            seed=self.seed,
            steps=self.steps,
            guidance=self.guidance,
        )


class VariationForm(OpenAIFields):
    """The text fields of ``POST /v1/images/variations`` (the ``image`` is a file part)."""

    def to_params(self) -> VariationParams:
        return VariationParams(n=self.images, size=self.output_size, seed=self.seed)


class EditForm(OpenAIFields):
    """The text fields of ``POST /v1/images/edits`` (``image`` and ``mask`` are file parts)."""

    prompt: str = Field(min_length=1, max_length=1000)
    quality: Literal["standard", "auto"] | None = None
    output_format: Literal["png"] | None = None

    _text = field_validator("prompt")(_has_text)

    def to_params(self) -> EditParams:
        return EditParams(prompt=self.prompt, n=self.images, size=self.output_size, seed=self.seed)


class ImageData(BaseModel):
    """One image: its signed, expiring URL or its PNG as base64 (as ``response_format`` asked)."""

    url: str | None = None
    b64_json: str | None = None


class ImagesResponse(BaseModel):
    created: int = Field(description="unix seconds")
    data: list[ImageData]


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class OpenAIErrorBody(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, rate_limit_error or server_error")
    param: str | None = None
    code: str | None = None
    job_id: str | None = Field(default=None, description="the job to poll natively (504 timeout)")


class OpenAIErrorResponse(BaseModel):
    """The error shape of every non-2xx answer under ``/v1``."""

    error: OpenAIErrorBody
