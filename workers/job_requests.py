"""From a job's task to the pipeline requests it samples, and from their images back to the job's.

A text-to-image job is one request. The image kinds (``contract.image_jobs``) read their uploads
from image storage and do their per-job model work (CLIP image encoding, the prior for a prompt
end, DDIM inversion: ``models.image_ops``) before the batch is sampled; a job whose inputs cannot
be read fails alone, with a reason, and the rest of the batch goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from contract.image_jobs import EditParams, InterpolationParams, TextDiffParams, VariationParams
from contract.schemas import GenerateRequest
from contract.storage import ImageStorage
from contract.tasks import GenerationTask
from models.configs import SamplingConfig
from models.image_ops import (
    End,
    edit_requests,
    encode_animation,
    interpolation_requests,
    text_diff_requests,
    variation_requests,
)
from models.pipeline import GenerationRequest, UnclipPipeline


class InputMissing(Exception):
    """An upload the job needs is gone from image storage (expired, or never stored)."""


@dataclass
class JobRequests:
    """The requests one job adds to a batch, and how its outputs become the job's files."""

    requests: list[GenerationRequest]
    animation: str | None = None  # an interpolation's format: its frames also become one file
    extras: dict[str, bytes] = field(default_factory=dict)

    def images(self, outputs: Sequence[np.ndarray | None]) -> np.ndarray | None:
        """The job's images [k x H x W x 3] from its requests' outputs, in order; None if any is
        missing (the job was canceled)."""
        if any(out is None for out in outputs):
            return None
        images = np.concatenate([out for out in outputs if out is not None])
        if self.animation is not None:
            self.extras[f"animation.{self.animation}"] = encode_animation(list(images), self.animation)
        return images


def job_requests(
    task: GenerationTask,
    job_id: str,
    pipeline: UnclipPipeline,
    storage: ImageStorage,
    sampling: SamplingConfig,
    progress: Callable[[int, int], None] | None = None,
) -> JobRequests:
    """The requests of ``task`` (job ``job_id``), sampled with ``sampling`` (the task's own)."""
    params, seed = task.request, task.seed
    if isinstance(params, GenerateRequest):
        return JobRequests([GenerationRequest(params.prompt, params.n, seed)])
    if isinstance(params, VariationParams):
        image = _input(storage, job_id, "image")
        inversion = params.mode == "inversion"
        return JobRequests(
            variation_requests(
                pipeline, image, params.n, seed, inversion=inversion, sampling=sampling, progress=progress
            )
        )
    if isinstance(params, InterpolationParams):
        a = End(image=_input(storage, job_id, "image_a")) if params.image_a else End(prompt=params.prompt_a)
        b = End(image=_input(storage, job_id, "image_b")) if params.image_b else End(prompt=params.prompt_b)
        requests = interpolation_requests(
            pipeline,
            a,
            b,
            params.steps,
            seed,
            inversion=params.inversion,
            sampling=sampling,
            progress=progress,
        )
        return JobRequests(requests, animation=params.animation)
    if isinstance(params, TextDiffParams):
        source = End(image=_input(storage, job_id, "image")) if params.image else End(prompt=params.prompt)
        return JobRequests(
            text_diff_requests(
                pipeline,
                source,
                params.base,
                params.target,
                params.angles,
                seed,
                sampling=sampling,
                progress=progress,
            )
        )
    if isinstance(params, EditParams):
        image = _input(storage, job_id, "image")
        mask = _input(storage, job_id, "mask", mode="L")
        return JobRequests(
            edit_requests(image, mask, params.prompt, params.n, seed, resample=params.resample)
        )
    raise TypeError(f"no requests for a {type(params).__name__}")


def _input(storage: ImageStorage, job_id: str, name: str, mode: str = "RGB") -> np.ndarray:
    """An upload as uint8 [S x S x 3] (``mode`` "L": [S x S])."""
    path = storage.file(job_id, f"input-{name}.png")
    if path is None:
        raise InputMissing(f"the uploaded {name} is no longer stored")
    with Image.open(path) as image:
        return np.asarray(image.convert(mode))
