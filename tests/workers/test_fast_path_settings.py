"""The worker's fast-path settings reach the pipeline (workers/runtime.py); nothing here is timed."""

from __future__ import annotations

import os

import pytest

from contract.settings import Settings
from models.execution import ExecutionConfig
from models.pipeline import UnclipPipeline
from workers.runtime import configure_openmp, execution_from_settings, warm_up


def test_defaults_are_the_models_defaults() -> None:
    assert execution_from_settings(Settings()) == ExecutionConfig()


def test_every_switch_reaches_the_execution_config() -> None:
    settings = Settings(
        fused_attention=False,
        channels_last=True,
        channels_last_devices=("cpu", "cuda"),
        autocast="bfloat16",
        autocast_stages=("decoder",),
        compile_unets=True,
        cuda_graphs=True,
        cast_weights_once=False,
        compile_stages=("decoder",),
        micro_batch_sr256=2,
        micro_batch_sr1024=3,
        micro_batch_devices=("cpu", "cuda"),
        native_norms_on_gpu=True,
        fold_scale_shift=False,
        in_place_activations=False,
    )
    execution = execution_from_settings(settings)
    assert execution == ExecutionConfig(
        fused_attention=False,
        channels_last=True,
        channels_last_devices=("cpu", "cuda"),
        autocast="bfloat16",
        autocast_stages=("decoder",),
        cast_weights_once=False,
        compile=True,
        compile_stages=("decoder",),
        cuda_graphs=True,
        micro_batch_sr256=2,
        micro_batch_sr1024=3,
        micro_batch_devices=("cpu", "cuda"),
        native_norms_on_gpu=True,
        fold_scale_shift=False,
        in_place_activations=False,
    )


def test_omp_wait_policy_is_set_unless_the_operator_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    configure_openmp("passive")

    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    configure_openmp("passive")
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    configure_openmp("default")
    assert "OMP_WAIT_POLICY" not in os.environ


def test_warm_up_runs_each_bucket_up_to_max_batch() -> None:
    pipeline = UnclipPipeline.random("tiny", execution=ExecutionConfig(graph_buckets=(1, 2, 4)))
    sizes: list[int] = []
    original = pipeline.generate

    def spy(requests, size, sampling=None, **kwargs):  # type: ignore[no-untyped-def]
        sizes.append(requests[0].n)
        assert size == 1024 and all(
            sampling.for_stage(s).steps == 1 for s in ("prior", "decoder", "sr256", "sr1024")
        )
        return original(requests, size, sampling, **kwargs)

    pipeline.generate = spy  # type: ignore[method-assign]
    assert warm_up(pipeline, max_batch=2) >= 0
    assert sizes == [1, 2]
