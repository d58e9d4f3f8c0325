"""A batch that raises: out of memory is retried at half size; a job that raises fails alone,
with a reason and no server path, while the rest of its batch succeeds. An in-process burst
worker on the tiny model and a real Redis; the fault is the device's (a pipeline that raises)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_client import CollectorRegistry
from redis import Redis

from contract.jobs import JobStore
from contract.metrics import WorkerMetrics
from contract.schemas import GenerateRequest
from contract.settings import Settings
from contract.storage import LocalImageStorage
from models.pipeline import GenerationRequest, load_pipeline
from tests.workers.harness import FAST
from workers.runtime import Runtime
from workers.text_cache import TextEncodingCache
from workers.worker import BatchingWorker


class FaultyDevice:
    """The real tiny pipeline, except that a batch of more than ``max_images`` images runs out of
    memory and a request for the prompt ``boom`` raises (with a server path in the message)."""

    def __init__(self, max_images: int):
        self.inner = load_pipeline("random:tiny", "cpu", "float32")
        self.max_images = max_images
        self.batches: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate(self, requests: Sequence[GenerationRequest], *args: Any, **kwargs: Any) -> Any:
        images = sum(r.n for r in requests)
        self.batches.append(images)
        if images > self.max_images:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if any(r.prompt == "boom" for r in requests):
            raise RuntimeError("cannot read '/srv/unclip/secret/weights.bin'")
        return self.inner.generate(requests, *args, **kwargs)


@pytest.fixture
def settings(redis_url: str, queue_name: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=redis_url, queue=queue_name, storage_dir=tmp_path, max_batch=8, max_wait_ms=0)


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    client.close()


def run_burst(settings: Settings, redis: Redis, device: FaultyDevice) -> WorkerMetrics:
    metrics = WorkerMetrics(CollectorRegistry())
    runtime = Runtime(
        lambda: device, lambda model_id: TextEncodingCache(redis, model_id, ttl_s=60, lru_size=0), metrics
    )  # type: ignore[arg-type,return-value]
    runtime.start()
    worker = BatchingWorker(
        [JobStore(redis, settings).queue],
        runtime=runtime,
        settings=settings,
        storage=LocalImageStorage(settings.storage_dir),
        metrics=metrics,
        connection=redis,
        name=f"{settings.queue}-{uuid.uuid4().hex[:4]}",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        worker.work(burst=True)
    finally:
        torch.set_num_threads(threads)
    return metrics


def submit(store: JobStore, prompts: list[str]) -> list[str]:
    return [
        store.submit_request(GenerateRequest.model_validate({"prompt": p, "size": "64x64", **FAST})).job.id
        for p in prompts
    ]


def test_out_of_memory_retries_the_batch_at_half_size(settings: Settings, redis: Redis) -> None:
    store = JobStore(redis, settings)
    ids = submit(store, [f"job {i}" for i in range(4)])
    device = FaultyDevice(max_images=2)
    metrics = run_burst(settings, redis, device)
    assert device.batches == [4, 2, 2]
    for job_id in ids:
        job = store.fetch(job_id)
        assert job is not None and store.render(job).status.value == "succeeded"
    assert metrics.batch_size._sum.get() == 4  # two batches of two sampled


def test_a_job_that_raises_fails_alone_with_a_reason(settings: Settings, redis: Redis) -> None:
    store = JobStore(redis, settings)
    ids = submit(store, ["fine 0", "fine 1", "boom", "fine 2"])
    device = FaultyDevice(max_images=8)
    run_burst(settings, redis, device)
    records = [store.render(store.fetch(job_id)) for job_id in ids]  # type: ignore[arg-type]
    assert [r.status.value for r in records] == ["succeeded", "succeeded", "failed", "succeeded"]
    error = records[2].error
    assert error is not None and error.code == "generation_failed"
    assert "RuntimeError" in error.message and "/srv" not in error.message and "<path>" in error.message
    assert device.batches == [4, 2, 2, 1, 1]  # halved until the job that raises is alone


def test_one_job_out_of_memory_fails_with_out_of_memory(settings: Settings, redis: Redis) -> None:
    store = JobStore(redis, settings)
    (job_id,) = [
        store.submit_request(
            GenerateRequest.model_validate({"prompt": "big", "size": "64x64", "n": 4, **FAST})
        ).job.id
    ]
    run_burst(settings, redis, FaultyDevice(max_images=2))
    record = store.render(store.fetch(job_id))  # type: ignore[arg-type]
    assert record.status.value == "failed" and record.error is not None
    assert record.error.code == "out_of_memory"
