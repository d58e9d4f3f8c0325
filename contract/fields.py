"""Field types and bounds shared by every request model of the job contract."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import AnyHttpUrl, UrlConstraints

MAX_SEED = 2**31 - 1
DIFFUSION_STAGES = ("prior", "decoder", "sr256", "sr1024")
# The one list of output sizes the service offers (the models' chain makes any side up to its
# last upsampler's: models.pipeline.stages_for_size).
SizeName = Literal["64x64", "256x256", "512x512", "1024x1024"]
SIZES: dict[str, int] = {name: int(name.split("x")[0]) for name in get_args(SizeName)}
WebhookUrl = Annotated[AnyHttpUrl, UrlConstraints(max_length=2048, allowed_schemes=["http", "https"])]
