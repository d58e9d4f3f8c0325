"""An in-process burst worker (rq's testing pattern) on the tiny model: batching, and rq's
bookkeeping kept honest for every member of a batch."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from contract.jobs import JobStore
from contract.schemas import GenerateRequest
from contract.settings import Settings, get_settings
from contract.storage import LocalImageStorage
from contract.tasks import JOB_FUNC
from tests.workers.harness import FAST, settings_env, steps
from workers.main import run


@pytest.fixture
def settings(
    redis_url: str, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    settings = Settings(
        redis_url=redis_url,
        queue=queue_name,
        storage_dir=tmp_path,
        weights="random:tiny",
        device="cpu",
        max_batch=8,
        max_wait_ms=0,
        worker_metrics_port=0,
    )
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


@pytest.mark.usefixtures("one_thread")  # as in the worker processes: the suite shares two cores
def test_burst_worker_batches_compatible_jobs_with_honest_bookkeeping(
    settings: Settings, redis: Redis, store: JobStore
) -> None:

    def submit(prompt: str, **extra: object) -> str:
        request = GenerateRequest.model_validate({"prompt": prompt, "size": "64x64", **FAST, **extra})
        return store.submit_request(request).job.id

    batched = [submit(f"queued {i}", n=1) for i in range(6)] + [submit("two images", n=2)]
    other = submit("other settings", **steps(3))
    broken = store.queue.enqueue_call(JOB_FUNC, kwargs={"request": {"prompt": ""}}).id
    name = f"{settings.queue}-burst-{uuid.uuid4().hex[:4]}"

    assert run(burst=True, name=name) == 0

    def job(job_id: str) -> Job:
        return Job.fetch(job_id, connection=redis, serializer=JSONSerializer)

    batch_ids = {job(j).meta["batch_id"] for j in batched}
    assert len(batch_ids) == 1 and job(batched[0]).meta["batch_size"] == 8
    assert job(other).meta["batch_id"] not in batch_ids and job(other).meta["batch_size"] == 1
    finished = FinishedJobRegistry(settings.queue, connection=redis)
    for job_id in [*batched, other]:
        assert job_id in finished
        record = job(job_id)
        assert record.get_status().value == "finished" and record.worker_name == name
        result = record.latest_result()
        assert result is not None and result.return_value["images"] == record.meta["images"]
        for k in range(record.meta["images"]):
            assert LocalImageStorage(settings.storage_dir).path(job_id, k) is not None
    assert broken in FailedJobRegistry(settings.queue, connection=redis)
    assert job(broken).meta["error"]["code"] == "invalid_job"
    assert len(StartedJobRegistry(settings.queue, connection=redis)) == 0
    assert store.queue.count == 0 and redis.llen(store.queue.intermediate_queue_key) == 0
    # The worker's own counters, as `rq info` reads them.
    counts = redis.hmget(f"rq:worker:{name}", ["successful_job_count", "failed_job_count"])
    assert [int(c or 0) for c in counts] == [len(batched) + 1, 1]
    assert not redis.exists(store.keys.owned(name))


@pytest.mark.usefixtures("one_thread")
def test_a_lone_job_does_not_wait_for_company(
    settings: Settings, redis: Redis, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing compatible queued behind it, a job starts at once instead of holding the
    batch window open (20 s here: the whole run, model start included, stays far below it)."""
    monkeypatch.setenv("UNCLIP_MAX_WAIT_MS", "20000")
    get_settings.cache_clear()
    request = GenerateRequest.model_validate({"prompt": "alone", "size": "64x64", **FAST})
    job_id = store.submit_request(request).job.id
    started = time.monotonic()
    assert run(burst=True, name=f"{settings.queue}-alone-{uuid.uuid4().hex[:4]}") == 0
    assert time.monotonic() - started < 20.0
    job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    assert job.get_status().value == "finished" and job.meta["batch_size"] == 1
