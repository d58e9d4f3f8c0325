"""The rq job a submit enqueues: its function reference and its payload.

The payload is the validated ``GenerateRequest`` with the seed filled in, stored as JSON (the
queue uses rq's JSON serializer, so nothing is unpickled). Sampling settings are resolved on the
worker against the loaded model's defaults (``GenerateRequest.sampling_overrides``): the API never
loads a model, so it never knows them.

``JOB_FUNC`` names ``workers.tasks.generate`` by string only (it is stored in every job record
in Redis); :class:`workers.worker.BatchingWorker` never calls it, and a plain rq worker that picks
such a job up fails it with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rq.job import Job

from contract.schemas import GenerateRequest

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

    def to_kwargs(self) -> dict[str, Any]:
        return {"request": self.request.model_dump(mode="json")}

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> GenerationTask:
        return cls(GenerateRequest.model_validate(kwargs["request"]))

    @classmethod
    def from_job(cls, job: Job) -> GenerationTask:
        return cls.from_kwargs(job.kwargs)
