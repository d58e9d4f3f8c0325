"""The image job kinds (Ramesh et al. 2022, §3): variations, interpolations, text diffs, edits.

Each kind's parameters as accepted (the form fields of its route, validated here), what it
uploads (``inputs``: the names under which the API stores the normalised images for the
worker), how many images it makes (``images``), and which sampling settings it fixes
(``sampling_overrides``, applied by the worker to the loaded model's defaults). Uploaded images
are not in the parameters: they travel through image storage (``contract.storage``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contract.fields import DIFFUSION_STAGES, MAX_SEED, SIZES, SizeName, WebhookUrl

Prompt = Annotated[str, Field(min_length=1, max_length=1000)]
DEFAULT_ANGLES = (0.0, 0.125, 0.25, 0.375, 0.5)  # §3.3: θ linearly spaced up to 0.25-0.5


class JobKind(StrEnum):
    GENERATE = "generate"
    VARIATION = "variation"
    INTERPOLATION = "interpolation"
    TEXT_DIFF = "text_diff"
    EDIT = "edit"


def _has_text(value: str | None) -> str | None:
    if value is not None and (not value.strip() or "\x00" in value):
        raise ValueError("must contain non-whitespace characters and no NUL")
    return value


class ImageJobParams(BaseModel):
    """What every image job has: output size, seed (filled in on submit), webhook."""

    model_config = ConfigDict(extra="forbid")

    kind: str  # each kind narrows it to its own literal
    size: SizeName = Field(default="256x256", description="64x64 is the decoder's output alone")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="omit for a random seed")
    webhook: WebhookUrl | None = Field(default=None, description="POSTed the job at its final state")

    @property
    def side(self) -> int:
        return SIZES[self.size]

    @property
    def inputs(self) -> tuple[str, ...]:
        """Names of the uploaded images this job reads."""
        return ()

    @property
    def images(self) -> int:
        """Images the job makes: the rows it adds to a batch."""
        raise NotImplementedError

    def sampling_overrides(self) -> dict[str, dict[str, int | float | str | None]]:
        """``{stage: {field: value}}`` this kind fixes (None: the model's default)."""
        return {stage: {} for stage in DIFFUSION_STAGES}


class VariationParams(ImageJobParams):
    """Variations of one image (§3.1): its CLIP embedding decoded with fresh noise, or, with
    ``mode=inversion``, from its DDIM-inverted latent with η = ``strength`` (0 gives the image
    back, 1 a free variation)."""

    kind: Literal["variation"] = "variation"
    n: int = Field(default=1, ge=1, le=10)
    mode: Literal["embedding", "inversion"] = "embedding"
    strength: float = Field(default=0.5, ge=0.0, le=1.0, allow_inf_nan=False, description="inversion only")
    eta: float | None = Field(
        default=None, ge=0.0, le=1.0, allow_inf_nan=False, description="embedding mode: DDIM η of the decoder"
    )

    @property
    def inputs(self) -> tuple[str, ...]:
        return ("image",)

    @property
    def images(self) -> int:
        return self.n

    def sampling_overrides(self) -> dict[str, dict[str, int | float | str | None]]:
        overrides = super().sampling_overrides()
        if self.mode == "inversion":
            overrides["decoder"] = {"sampler": "ddim", "eta": self.strength}
        elif self.eta is not None:
            overrides["decoder"] = {"sampler": "ddim", "eta": self.eta}
        return overrides


class InterpolationParams(ImageJobParams):
    """Frames between two ends, each an uploaded image or a prompt (§3.2): slerp between their
    CLIP image embeddings, every frame decoded from the same noise, or from the slerped inverted
    latents of two images with ``inversion``."""

    kind: Literal["interpolation"] = "interpolation"
    prompt_a: Prompt | None = None
    prompt_b: Prompt | None = None
    image_a: bool = Field(default=False, description="end A is the uploaded image_a")
    image_b: bool = Field(default=False, description="end B is the uploaded image_b")
    steps: int = Field(default=5, ge=2, le=16, description="frames, ends included")
    inversion: bool = False
    animation: Literal["gif", "webp"] = "gif"

    _text = field_validator("prompt_a", "prompt_b")(_has_text)

    @model_validator(mode="after")
    def _one_source_per_end(self) -> InterpolationParams:
        for end in ("a", "b"):
            has_image, prompt = getattr(self, f"image_{end}"), getattr(self, f"prompt_{end}")
            if has_image == (prompt is not None):
                raise ValueError(f"end {end.upper()} needs exactly one of image_{end} or prompt_{end}")
        if self.inversion and not (self.image_a and self.image_b):
            raise ValueError("inversion needs two images (a prompt has no latent to invert)")
        return self

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(name for name, given in (("image_a", self.image_a), ("image_b", self.image_b)) if given)

    @property
    def images(self) -> int:
        return self.steps

    def sampling_overrides(self) -> dict[str, dict[str, int | float | str | None]]:
        overrides = super().sampling_overrides()
        if self.inversion:
            overrides["decoder"] = {"sampler": "ddim", "eta": 0.0}
        return overrides


class TextDiffParams(ImageJobParams):
    """A text diff (§3.3): the image's embedding rotated towards normalize(z_t(target) - z_t(base))
    by each angle θ, each frame decoded from the image's inverted latent (a prompt source: its
    prior embedding, every frame from the same noise)."""

    kind: Literal["text_diff"] = "text_diff"
    prompt: Prompt | None = None
    image: bool = Field(default=False, description="the source is the uploaded image")
    base: Prompt
    target: Prompt
    angles: list[float] = Field(default=list(DEFAULT_ANGLES), min_length=1, max_length=16)

    _text = field_validator("prompt", "base", "target")(_has_text)

    @field_validator("angles")
    @classmethod
    def _angles_in_range(cls, angles: list[float]) -> list[float]:
        if any(not 0.0 <= a <= 1.0 for a in angles):
            raise ValueError("each angle must be between 0 and 1")
        return angles

    @model_validator(mode="after")
    def _a_source_and_a_difference(self) -> TextDiffParams:
        if self.image == (self.prompt is not None):
            raise ValueError("give exactly one source: image or prompt")
        if " ".join(self.base.split()).lower() == " ".join(self.target.split()).lower():
            raise ValueError("base and target captions are equal: there is no text diff")
        return self

    @property
    def inputs(self) -> tuple[str, ...]:
        return ("image",) if self.image else ()

    @property
    def images(self) -> int:
        return len(self.angles)

    def sampling_overrides(self) -> dict[str, dict[str, int | float | str | None]]:
        overrides = super().sampling_overrides()
        if self.image:
            overrides["decoder"] = {"sampler": "ddim", "eta": 0.0}
        return overrides


class EditParams(ImageJobParams):
    """An edit: the prompt drawn where the mask says, the source kept elsewhere (masked
    sampling with RePaint's resampling at the decoder, pasting at each upsampler)."""

    kind: Literal["edit"] = "edit"
    prompt: Prompt
    n: int = Field(default=1, ge=1, le=10)
    resample: int = Field(default=3, ge=1, le=10, description="RePaint passes per decoder step")

    _text = field_validator("prompt")(_has_text)

    @property
    def inputs(self) -> tuple[str, ...]:
        return ("image", "mask")

    @property
    def images(self) -> int:
        return self.n


ImageJobKinds = VariationParams | InterpolationParams | TextDiffParams | EditParams
IMAGE_JOB_PARAMS: dict[
    str, type[VariationParams] | type[InterpolationParams] | type[TextDiffParams] | type[EditParams]
] = {
    get_args(cls.model_fields["kind"].annotation)[0]: cls
    for cls in (VariationParams, InterpolationParams, TextDiffParams, EditParams)
}
