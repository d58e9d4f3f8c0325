"""The worker's side of a task: the target rq records for every generation job, and the
resolution of a task's sampling overrides against the loaded model's defaults.

``generate`` is what ``contract.tasks.JOB_FUNC`` names. It is never called by
:class:`workers.worker.BatchingWorker`, which samples compatible jobs together and records each
job's outcome itself; a plain rq worker that picks a job up fails it with a clear message.
"""

from __future__ import annotations

from typing import Any, NoReturn

from contract.tasks import GenerationTask
from models.configs import SamplingConfig


def sampling_for(task: GenerationTask, defaults: SamplingConfig) -> SamplingConfig:
    """The model's default sampling settings with the task's overrides applied."""
    return defaults.with_overrides(task.request.sampling_overrides())


def generate(request: dict[str, Any]) -> NoReturn:
    """Placeholder body of the rq job: generation jobs run in batches inside ``unclip worker``."""
    raise RuntimeError(
        "generation jobs are sampled in batches by `unclip worker` (workers.worker.BatchingWorker); "
        "a plain rq worker cannot run them"
    )
