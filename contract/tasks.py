"""The rq job a submit enqueues: its function reference and its payload.

The payload is the validated request with the seed filled in, stored as JSON (the queue uses
rq's JSON serializer, so nothing is unpickled): ``{"request": ...}`` for a text-to-image job (the
format every earlier job record has), ``{"kind": ..., "params": ...}`` for the image job kinds
(``contract.image_jobs``; their uploads are in image storage). Sampling settings are resolved on
the worker against the loaded model's defaults (``sampling_overrides``): the API never loads a
model, so it never knows them.

``JOB_FUNC`` names ``workers.tasks.generate`` by string only (it is stored in every job record
in Redis); :class:`workers.worker.BatchingWorker` never calls it, and a plain rq worker that picks
such a job up fails it with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rq.job import Job

from contract.image_jobs import IMAGE_JOB_PARAMS, ImageJobKinds, JobKind
from contract.schemas import GenerateRequest

JOB_FUNC = "workers.tasks.generate"

TaskParams = GenerateRequest | ImageJobKinds


@dataclass(frozen=True)
class GenerationTask:
    """One job's payload: a request (of any kind) whose ``seed`` is set."""

    request: TaskParams

    def __post_init__(self) -> None:
        if self.request.seed is None:
            raise ValueError("a queued request must carry its seed")

    @property
    def kind(self) -> JobKind:
        if isinstance(self.request, GenerateRequest):
            return JobKind.GENERATE
        return JobKind(self.request.kind)

    @property
    def seed(self) -> int:
        assert self.request.seed is not None
        return self.request.seed

    @property
    def size(self) -> int:
        return self.request.side

    @property
    def images(self) -> int:
        """Images the job makes: the rows it adds to a batch."""
        if isinstance(self.request, GenerateRequest):
            return self.request.n
        return self.request.images

    def to_kwargs(self) -> dict[str, Any]:
        payload = self.request.model_dump(mode="json")
        if isinstance(self.request, GenerateRequest):
            return {"request": payload}
        return {"kind": self.kind.value, "params": payload}

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> GenerationTask:
        if "kind" in kwargs:
            return cls(IMAGE_JOB_PARAMS[kwargs["kind"]].model_validate(kwargs["params"]))
        return cls(GenerateRequest.model_validate(kwargs["request"]))

    @classmethod
    def from_job(cls, job: Job) -> GenerationTask:
        return cls.from_kwargs(job.kwargs)
