"""workers.tasks: a task's sampling overrides applied to the loaded model's defaults."""

from __future__ import annotations

import pytest

from contract.schemas import GenerateRequest
from contract.tasks import GenerationTask
from models.configs import SamplingConfig, StageSampling
from workers.tasks import generate, sampling_for

DEFAULTS = SamplingConfig(
    prior=StageSampling(steps=16, guidance=1.0),
    decoder=StageSampling(steps=20, guidance=3.0, sampler="ddpm"),
    sr256=StageSampling(steps=8),
    sr1024=StageSampling(steps=5),
)


def task(**fields: object) -> GenerationTask:
    return GenerationTask(GenerateRequest.model_validate({"prompt": "a", "seed": 1, **fields}))


def test_sampling_for_overrides_only_what_was_given() -> None:
    sampling = sampling_for(task(steps={"decoder": 4, "sr256": 2}, guidance={"decoder": 5.5}), DEFAULTS)
    assert sampling.decoder == StageSampling(steps=4, guidance=5.5, sampler="ddpm")
    assert sampling.sr256 == StageSampling(steps=2)
    assert sampling.prior == DEFAULTS.prior and sampling.sr1024 == DEFAULTS.sr1024
    assert sampling_for(task(), DEFAULTS) == DEFAULTS


def test_a_task_needs_its_seed() -> None:
    with pytest.raises(ValueError, match="seed"):
        GenerationTask(GenerateRequest(prompt="a"))


def test_a_plain_rq_worker_cannot_run_a_generation_job() -> None:
    with pytest.raises(RuntimeError, match="unclip worker"):
        generate({"prompt": "a"})
