"""workers.leases: the reaper recovers a dead worker's jobs (real Redis, no model).

A "dead worker" here is an rq worker record and an owned set with no lease key: exactly what a
kill -9 leaves behind.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from redis import Redis
from rq.job import Job
from rq.job import JobStatus as RqStatus
from rq.queue import Queue
from rq.registry import CanceledJobRegistry, FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from contract.jobs import JobStore
from contract.schemas import GenerateRequest, JobStatus
from contract.settings import Settings
from workers.leases import Lease, Ownership, Reaper


@pytest.fixture
def settings(redis_url: str, queue_name: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=redis_url, queue=queue_name, storage_dir=tmp_path, lease_ttl_s=2)


class Finals:
    """The metrics ``JobStore.record_final`` counts into: which final states were counted."""

    def __init__(self) -> None:
        self.calls: list[JobStatus] = []

    def count_final(self, status: str, latency_s: float | None) -> None:
        self.calls.append(JobStatus(status))


def reaper(store: JobStore, finals: Finals, worker_name: str | None = None) -> Reaper:
    return Reaper(JobStore(store.connection, store.settings, finals), worker_name=worker_name)


def start_on_dead_worker(store: JobStore, redis: Redis, name: str, attempts: int = 0) -> Job:
    """Submit a job and leave it the way a worker killed mid-batch leaves it (``name`` must be
    unique: rq's worker records are not per queue)."""
    job = store.submit_request(GenerateRequest(prompt="lost", seed=1)).job
    job.meta["attempts"] = attempts
    job.save_meta()
    worker = SimpleWorker([store.queue], connection=redis, name=name, serializer=JSONSerializer)
    worker.register_birth()
    dequeued = Queue.dequeue_any([store.queue], None, connection=redis, serializer=JSONSerializer)
    assert dequeued is not None and dequeued[0].id == job.id
    execution = worker.prepare_execution(job)
    worker.prepare_job_execution(job, remove_from_intermediate_queue=True)
    assert execution is not None
    Ownership(redis, store.keys, store.queue, name).adopt(job.id)
    redis.sadd(store.keys.leases, name)  # listed, but no lease key: dead
    return job


def test_a_dead_workers_job_is_requeued_at_the_front(
    store: JobStore, redis: Redis, settings: Settings
) -> None:
    job = start_on_dead_worker(store, redis, f"{settings.queue}-dead-1")
    waiting = store.submit_request(GenerateRequest(prompt="waiting", seed=2)).job
    assert store.queue.get_job_ids() == [waiting.id]
    assert job.id in StartedJobRegistry(settings.queue, connection=redis)
    finals = Finals()
    assert reaper(store, finals).run_once() == [f"{settings.queue}-dead-1"]
    job = store.fetch(job.id)  # type: ignore[assignment]
    assert job.get_status() is RqStatus.QUEUED and job.meta["attempts"] == 1
    assert store.queue.get_job_ids() == [job.id, waiting.id]  # first in line again
    assert job.id not in StartedJobRegistry(settings.queue, connection=redis)
    assert not redis.exists(store.keys.owned(f"{settings.queue}-dead-1"))
    assert not redis.sismember(store.keys.leases, f"{settings.queue}-dead-1")
    # rq no longer lists it (`rq info` would otherwise show it for minutes).
    assert f"rq:worker:{settings.queue}-dead-1".encode() not in redis.smembers(f"rq:workers:{settings.queue}")
    assert finals.calls == []


def test_after_the_retry_limit_the_job_fails_with_worker_lost(
    store: JobStore, redis: Redis, settings: Settings
) -> None:
    job = start_on_dead_worker(
        store, redis, f"{settings.queue}-dead-2", attempts=settings.max_worker_lost_retries
    )
    finals = Finals()
    reaper(store, finals).run_once()
    job = store.fetch(job.id)  # type: ignore[assignment]
    assert job.get_status() is RqStatus.FAILED
    assert job.meta["error"]["code"] == "worker_lost"
    assert job.id in FailedJobRegistry(settings.queue, connection=redis)
    assert store.render(job).error is not None
    assert finals.calls == [JobStatus.FAILED] and redis.exists(store.keys.final(job.id))
    assert job.id not in store.queue.get_job_ids()


def test_a_canceled_job_of_a_dead_worker_ends_canceled(
    store: JobStore, redis: Redis, settings: Settings
) -> None:
    job = start_on_dead_worker(store, redis, f"{settings.queue}-dead-3")
    store.cancel(job)  # running: only flagged
    finals = Finals()
    reaper(store, finals).run_once()
    assert store.fetch(job.id).get_status() is RqStatus.CANCELED  # type: ignore[union-attr]
    assert job.id in CanceledJobRegistry(settings.queue, connection=redis)
    assert finals.calls == [JobStatus.CANCELED] and redis.exists(store.keys.final(job.id))


def test_live_workers_are_left_alone(store: JobStore, redis: Redis, settings: Settings) -> None:
    job = start_on_dead_worker(store, redis, f"{settings.queue}-alive")
    Lease(redis, store.keys, f"{settings.queue}-alive", settings.lease_ttl_s).renew()
    assert reaper(store, Finals()).run_once() == []
    assert store.fetch(job.id).get_status() is RqStatus.STARTED  # type: ignore[union-attr]
    assert store.live_workers() == 1


def test_two_reapers_recover_a_job_once(store: JobStore, redis: Redis, settings: Settings) -> None:
    job = start_on_dead_worker(store, redis, f"{settings.queue}-dead-4")
    first = reaper(store, Finals(), worker_name="a").run_once()
    second = reaper(store, Finals(), worker_name="b").run_once()
    assert first == [f"{settings.queue}-dead-4"] and second == []
    assert store.queue.get_job_ids().count(job.id) == 1


def test_a_job_stranded_between_dequeue_and_claim_is_requeued(
    store: JobStore, redis: Redis, settings: Settings
) -> None:
    job = store.submit_request(GenerateRequest(prompt="stranded", seed=3)).job
    Queue.dequeue_any([store.queue], None, connection=redis, serializer=JSONSerializer)  # then "died"
    assert store.queue.get_job_ids() == []
    recovery = reaper(store, Finals())
    recovery.run_once()  # first sighting: could be a live worker about to claim it
    assert store.queue.get_job_ids() == []
    time.sleep(settings.lease_ttl_s + 0.2)
    recovery.run_once()
    assert store.queue.get_job_ids() == [job.id]
    assert redis.lrange(store.queue.intermediate_queue_key, 0, -1) == []
