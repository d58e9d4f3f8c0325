"""Real worker processes: kill -9 mid-batch loses no job; SIGTERM finishes the batch first."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq.job import JobStatus as RqStatus
from rq.registry import FinishedJobRegistry, StartedJobRegistry

from contract.jobs import JobStore
from contract.schemas import GenerateRequest
from contract.settings import Settings
from tests.workers.harness import WorkerProcess, steps, wait_for, workers

pytestmark = pytest.mark.slow  # worker subprocesses, each loading the model

SLOW = steps(30)  # long enough to kill a worker in the middle


@pytest.fixture
def settings(redis_url: str, queue_name: str, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        queue=queue_name,
        storage_dir=tmp_path / "images",
        weights="random:tiny",
        device="cpu",
        max_batch=8,
        max_wait_ms=300,
        lease_ttl_s=3,
    )


def submit_many(store: JobStore, count: int, fields: dict[str, Any]) -> list[str]:
    return [
        store.submit_request(GenerateRequest(prompt=f"job {i}", size="64x64", seed=i, **fields)).job.id
        for i in range(count)
    ]


def worker_of(store: JobStore, job_id: str) -> str | None:
    job = store.fetch(job_id)
    return job.worker_name if job is not None else None


def statuses(store: JobStore, job_ids: list[str]) -> list[RqStatus]:
    return [store.fetch(job_id).get_status() for job_id in job_ids]  # type: ignore[union-attr]


def progress(store: JobStore, job_id: str) -> float:
    job = store.fetch(job_id)
    return float(((job.meta.get("progress") or {}) if job is not None else {}).get("fraction", 0))


def test_kill_9_mid_batch_loses_no_job(
    settings: Settings, redis: Redis, store: JobStore, tmp_path: Path
) -> None:
    names = [f"{settings.queue}-a", f"{settings.queue}-b"]
    with workers(settings, names, tmp_path, redis) as (first, second):
        job_ids = submit_many(store, 6, SLOW)
        # Not "all six started": a worker that dequeues a job before the next is submitted starts
        # it alone, so how the six split into batches depends on the machine's load. What the
        # test needs is one batch under way; its members are the jobs the kill loses.
        wait_for(
            lambda: worker_of(store, job_ids[0]) is not None and progress(store, job_ids[0]) > 0.05,
            60,
            what="the first job's batch to be under way",
        )
        owner, survivor = (first, second) if worker_of(store, job_ids[0]) == first.name else (second, first)
        # A batch's members are fixed once it samples, so this snapshot is the batch the kill hits.
        lost = [
            job_id
            for job_id, status in zip(job_ids, statuses(store, job_ids), strict=True)
            if status is RqStatus.STARTED and worker_of(store, job_id) == owner.name
        ]
        assert job_ids[0] in lost
        owner.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        owner.process.wait(10)
        # Detected and requeued within a lease period plus a reaper interval (not rq's 10 minutes).
        wait_for(lambda: store.fetch(lost[0]).meta.get("attempts") == 1, 15, 0.05, "the requeue")  # type: ignore[union-attr]
        detected_s = time.monotonic() - killed_at
        wait_for(lambda: all(s is RqStatus.FINISHED for s in statuses(store, job_ids)), 120, what="every job")
        print(f"\n{len(lost)} job(s) of the kill -9'd worker requeued {detected_s:.1f}s after the kill")
        assert detected_s < settings.lease_ttl_s * 1.5 + 3
        for job_id in job_ids:
            job = store.fetch(job_id)
            assert job is not None and store.render(job).status.value == "succeeded"
            if job_id in lost:
                assert job.worker_name == survivor.name
            assert job.meta["attempts"] == (1 if job_id in lost else 0)
        assert len(StartedJobRegistry(settings.queue, connection=redis)) == 0
        assert len(FinishedJobRegistry(settings.queue, connection=redis)) == len(job_ids)
        assert store.live_workers() == 1


def test_sigterm_finishes_the_batch_then_exits(
    settings: Settings, redis: Redis, store: JobStore, tmp_path: Path
) -> None:
    worker = WorkerProcess(settings, f"{settings.queue}-{uuid.uuid4().hex[:4]}", tmp_path).wait_ready(redis)
    try:
        job_ids = submit_many(store, 3, SLOW)
        # The first job's batch may be all three or start alone (dequeued before the others were
        # submitted): the SIGTERM lands while it samples, and the jobs left queued stay queued.
        wait_for(lambda: progress(store, job_ids[0]) > 0.05, 30, what="the batch to be under way")
        in_batch = [s is RqStatus.STARTED for s in statuses(store, job_ids)]
        worker.signal(signal.SIGTERM)
        assert worker.process.wait(120) == 0, worker.log()
        after = statuses(store, job_ids)
        for was_started, status in zip(in_batch, after, strict=True):
            assert status is (RqStatus.FINISHED if was_started else RqStatus.QUEUED), worker.log()
        assert store.live_workers() == 0
        assert not redis.exists(store.keys.owned(worker.name))
    finally:
        worker.stop()
