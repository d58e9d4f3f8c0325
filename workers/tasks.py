"""The rq job a submit enqueues: its function reference and its payload.

The payload is the validated ``GenerateRequest`` with the seed filled in, stored as JSON (the
queue uses rq's JSON serializer, so nothing is unpickled). The sampling settings are resolved
on the worker against the loaded model's defaults (``GenerateRequest.to_sampling``): the API
never loads a model, so it never knows them.

``generate`` itself is never called by :class:`workers.worker.BatchingWorker`, which samples
compatible jobs together and records each job's outcome through rq's own success and failure
paths. A plain rq worker that picks the job up fails it with a clear message instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

from rq.job import Job

from models.configs import SamplingConfig
from service.schemas import GenerateRequest

JOB_FUNC = "workers.tasks.generate"


@dataclass(frozen=True)
class GenerationTask:
    """One job's payload: a request whose ``seed`` is set."""

    request: GenerateRequest

    def __post_init__(self) -> None:
        if self.request.seed is None:
            raise ValueError("a queued request must carry its seed")

    @property
    def seed(self) -> int:
        assert self.request.seed is not None
        return self.request.seed

    @property
    def size(self) -> int:
        return self.request.side

    def sampling(self, defaults: SamplingConfig) -> SamplingConfig:
        return self.request.to_sampling(defaults)

    def to_kwargs(self) -> dict[str, Any]:
        return {"request": self.request.model_dump(mode="json")}

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> GenerationTask:
        return cls(GenerateRequest.model_validate(kwargs["request"]))

    @classmethod
    def from_job(cls, job: Job) -> GenerationTask:
        return cls.from_kwargs(job.kwargs)


def generate(request: dict[str, Any]) -> NoReturn:
    """Placeholder body of the rq job: generation jobs run in batches inside ``unclip worker``."""
    raise RuntimeError(
        "generation jobs are sampled in batches by `unclip worker` (workers.worker.BatchingWorker); "
        "a plain rq worker cannot run them"
    )
