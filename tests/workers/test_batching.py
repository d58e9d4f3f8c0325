"""workers.batching: pure grouping of compatible jobs under max_batch / max_wait."""

from __future__ import annotations

import pytest

from models.configs import SamplingConfig, StageSampling
from workers.batching import Batch, BatchKey, BatchLimits, Candidate, plan_batches

FAST = SamplingConfig(prior=StageSampling(steps=2), decoder=StageSampling(steps=2, guidance=3.0))
SLOW = SamplingConfig(prior=StageSampling(steps=2), decoder=StageSampling(steps=9, guidance=3.0))


def job(job_id: str, size: int = 64, sampling: SamplingConfig = FAST, n: int = 1) -> Candidate:
    return Candidate(job_id, BatchKey(size, sampling), n)


def test_equal_settings_make_equal_keys() -> None:
    same = SamplingConfig(prior=StageSampling(steps=2), decoder=StageSampling(steps=2, guidance=3.0))
    assert BatchKey(64, FAST) == BatchKey(64, same)
    assert hash(BatchKey(64, FAST)) == hash(BatchKey(64, same))
    assert BatchKey(64, FAST) != BatchKey(256, FAST)
    assert BatchKey(64, FAST) != BatchKey(64, SLOW)


def test_only_compatible_jobs_join_in_queue_order() -> None:
    batch = Batch(job("a"), BatchLimits(max_images=8, max_wait_s=0.05), started_at=0.0)
    waiting = [job("b"), job("c", size=256), job("d", sampling=SLOW), job("e")]
    assert [c.job_id for c in batch.choose(waiting)] == ["b", "e"]


def test_images_not_jobs_fill_a_batch() -> None:
    batch = Batch(job("a", n=3), BatchLimits(max_images=4, max_wait_s=1.0), started_at=0.0)
    chosen = batch.choose([job("b", n=2), job("c", n=1), job("d", n=1)])
    assert [c.job_id for c in chosen] == ["c"]  # b would overflow; d no longer fits after c
    for candidate in chosen:
        batch.add(candidate)
    assert batch.images == 4 and batch.is_full()
    assert not batch.should_wait(now=0.0)


def test_a_job_larger_than_the_limit_runs_alone() -> None:
    batch = Batch(job("big", n=10), BatchLimits(max_images=8, max_wait_s=1.0), started_at=0.0)
    assert batch.is_full()
    assert batch.choose([job("b")]) == []


def test_add_refuses_what_does_not_fit() -> None:
    batch = Batch(job("a"), BatchLimits(max_images=2, max_wait_s=0.0), started_at=0.0)
    with pytest.raises(ValueError):
        batch.add(job("b", size=256))
    with pytest.raises(ValueError):
        batch.add(job("a"))  # already in
    batch.add(job("b"))
    with pytest.raises(ValueError):
        batch.add(job("c"))  # full


def test_wait_window() -> None:
    batch = Batch(job("a"), BatchLimits(max_images=8, max_wait_s=0.05), started_at=10.0)
    assert not batch.should_wait(now=10.01)  # alone: nobody is coming, start at once
    batch.add(job("b"))
    assert batch.should_wait(now=10.01)  # company came: jobs are arriving together
    assert batch.time_left(now=10.01) == pytest.approx(0.04)
    assert not batch.should_wait(now=10.05)
    assert batch.time_left(now=11.0) == 0.0
    no_wait = Batch(job("a"), BatchLimits(max_images=8, max_wait_s=0.0), started_at=10.0)
    no_wait.add(job("b"))
    assert not no_wait.should_wait(now=10.0)


def test_a_lone_job_waits_only_when_configured_to() -> None:
    limits = BatchLimits(max_images=8, max_wait_s=0.05, wait_alone=True)
    alone = Batch(job("a"), limits, started_at=10.0)
    assert alone.should_wait(now=10.01)
    assert not alone.should_wait(now=10.05)


def test_plan_batches_groups_by_key_and_splits_by_size() -> None:
    queue = (
        [job(f"f{i}") for i in range(5)] + [job("s0", sampling=SLOW)] + [job(f"f{i}") for i in range(5, 10)]
    )
    batches = plan_batches(queue, BatchLimits(max_images=8, max_wait_s=0.0))
    assert [[c.job_id for c in b] for b in batches] == [
        ["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7"],
        ["s0"],
        ["f8", "f9"],
    ]


def test_eight_queued_jobs_fill_one_batch_of_eight() -> None:
    batches = plan_batches([job(f"j{i}") for i in range(8)], BatchLimits(max_images=8, max_wait_s=0.0))
    assert len(batches) == 1 and len(batches[0]) == 8


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        BatchLimits(max_images=0, max_wait_s=0.0)
    with pytest.raises(ValueError):
        BatchLimits(max_images=1, max_wait_s=-1.0)
