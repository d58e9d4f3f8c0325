"""workers.runtime: the state machine (STARTING/READY/BUSY/DEFUNCT) and what it records.

The failure cases need failures on demand, so they use a stand-in pipeline; the GPU check runs
the real tiny model and is the one test gated on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from prometheus_client import CollectorRegistry

from contract.metrics import WorkerMetrics
from models.clip import TextEncoding
from models.configs import SamplingConfig, get_config
from workers.runtime import InvalidStateError, Runtime, RuntimeState
from workers.text_cache import TextEncodingCache


class StubPipeline:
    """Just enough of ``UnclipPipeline`` to drive the runtime; ``fail_with`` makes generate raise."""

    def __init__(self, fail_with: Exception | None = None):
        self.config = get_config("tiny")
        self.model_id = "stub"
        self.device = torch.device("cpu")
        self.fail_with = fail_with
        self.seen_text: TextEncoding | None = None

    def encode_text(self, prompts: Sequence[str]) -> TextEncoding:
        n = len(prompts)
        return TextEncoding(torch.zeros(n, 4), torch.zeros(n, 2, 4), torch.ones(n, 2, dtype=torch.bool))

    def generate(self, requests: Sequence[Any], size: int, sampling: Any = None, **kwargs: Any) -> Any:
        from models.pipeline import GenerationOutput

        if self.fail_with is not None:
            raise self.fail_with
        self.seen_text = kwargs["text"]
        return GenerationOutput(images=[None] * len(requests), timings={"clip": 0.001, "prior": 0.5})


def make(loader: Callable[[], Any]) -> tuple[Runtime, WorkerMetrics]:
    metrics = WorkerMetrics(CollectorRegistry())
    cache = lambda model_id: TextEncodingCache(None, model_id, ttl_s=60, lru_size=4, metrics=metrics)  # noqa: E731
    return Runtime(loader, cache, metrics), metrics


def gauge(metrics: WorkerMetrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


def test_start_then_generate() -> None:
    runtime, metrics = make(StubPipeline)
    assert runtime.state is RuntimeState.STARTING and gauge(metrics, "unclip_worker_up") == 0
    runtime.start()
    assert runtime.state is RuntimeState.READY and gauge(metrics, "unclip_worker_up") == 1
    assert isinstance(runtime.default_sampling, SamplingConfig)
    from models.pipeline import GenerationRequest

    output = runtime.generate([GenerationRequest("a"), GenerationRequest("a")], 64, runtime.default_sampling)
    assert runtime.state is RuntimeState.READY
    assert output.timings["clip"] >= 0.001  # the cache lookup and encoding are counted as "clip"
    assert metrics.registry.get_sample_value("unclip_stage_latency_seconds_count", {"stage": "prior"}) == 1
    assert (
        gauge(metrics, "unclip_text_cache_misses_total") == 1
        and gauge(metrics, "unclip_text_cache_hits_total") == 1
    )
    with pytest.raises(InvalidStateError):
        runtime.start()


def test_a_failed_load_is_defunct() -> None:
    def broken() -> Any:
        raise FileNotFoundError("no weights")

    runtime, metrics = make(broken)
    with pytest.raises(FileNotFoundError):
        runtime.start()
    assert runtime.state is RuntimeState.DEFUNCT and gauge(metrics, "unclip_worker_up") == 0
    with pytest.raises(InvalidStateError):
        runtime.generate([], 64, SamplingConfig())


@pytest.mark.parametrize(
    ("error", "after"),
    [
        (RuntimeError("CUDA error: an illegal memory access was encountered"), RuntimeState.DEFUNCT),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), RuntimeState.READY),
        (ValueError("a bad request"), RuntimeState.READY),
    ],
)
def test_only_unrecoverable_errors_make_it_defunct(error: Exception, after: RuntimeState) -> None:
    from models.pipeline import GenerationRequest

    runtime, _ = make(lambda: StubPipeline(fail_with=error))
    runtime.start()
    with pytest.raises(type(error)):
        runtime.generate([GenerationRequest("a")], 64, runtime.default_sampling)
    assert runtime.state is after


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_memory_gauge_on_cuda() -> None:
    from models.pipeline import GenerationRequest, load_pipeline

    runtime, metrics = make(lambda: load_pipeline("random:tiny", device="cuda"))
    runtime.start()
    runtime.generate([GenerationRequest("a red cube", n=2)], 64, runtime.default_sampling)
    assert (gauge(metrics, "unclip_gpu_memory_bytes") or 0) > 0
