"""workers.progress (rate-limited progress writes, cancel polling) and workers.text_cache."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from contract.jobs import JobStore
from contract.schemas import GenerateRequest
from models.clip import TextEncoding
from workers.leases import Ownership
from workers.progress import CancelWatch, ProgressWriter
from workers.text_cache import TextEncodingCache, normalize_prompt


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_fraction_spans_the_chain_and_writes_are_rate_limited(store: JobStore, redis: Redis) -> None:
    jobs = [store.submit_request(GenerateRequest(prompt=f"p{i}", seed=i)).job for i in range(3)]
    clock = Clock()
    writer = ProgressWriter(redis, jobs, {"prior": 4, "decoder": 6}, min_interval_s=0.25, clock=clock)
    writer("clip", 1, 1)
    for step in range(1, 5):
        writer("prior", step, 4)  # 4 calls at the same instant: only the first is written
    assert writer.writes == 1
    clock.now = 0.3
    writer("decoder", 3, 6)
    assert writer.writes == 2
    stored = Job.fetch(jobs[2].id, connection=redis, serializer=JSONSerializer).meta["progress"]
    assert stored == {"stage": "decoder", "step": 3, "total": 6, "fraction": 0.7}
    writer("decoder", 6, 6)
    writer.flush()
    assert (
        Job.fetch(jobs[0].id, connection=redis, serializer=JSONSerializer).meta["progress"]["fraction"] == 1.0
    )


def test_cancel_watch_reports_flagged_and_lost_members(store: JobStore, redis: Redis) -> None:
    jobs = [store.submit_request(GenerateRequest(prompt=f"p{i}", seed=i)).job for i in range(3)]
    ownership = Ownership(redis, store.keys, store.queue, f"{store.queue.name}-w")
    for job in jobs:
        ownership.adopt(job.id)
    clock = Clock()
    watch = CancelWatch(redis, store.keys, ownership, [j.id for j in jobs], min_interval_s=0.25, clock=clock)
    assert watch() == set()
    redis.set(store.keys.cancel(jobs[1].id), 1)
    redis.srem(ownership.key, jobs[2].id)  # reaped away from us
    assert watch() == set()  # not polled again yet
    clock.now = 1.0
    assert watch() == {1, 2} and watch.dropped == {1} and watch.lost == {2}


class CountingEncoder:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, prompts: Sequence[str]) -> TextEncoding:
        self.calls.append(list(prompts))
        rows = torch.stack([torch.full((4,), float(len(p))) for p in prompts])
        return TextEncoding(
            rows, rows[:, None, :].repeat(1, 3, 1), torch.ones(len(prompts), 3, dtype=torch.bool)
        )


def test_text_cache_lru_then_redis_then_encoder(redis: Redis, queue_name: str) -> None:
    model_id = f"test-{queue_name}"
    encoder = CountingEncoder()
    cache = TextEncodingCache(redis, model_id, ttl_s=60, lru_size=8)
    first = cache.encode(["A  cat", "a dog", "a cat "], encoder)
    assert encoder.calls == [["A  cat", "a dog"]]  # one call, the repeat served from the first row
    assert len(first) == 3 and torch.equal(first.embedding[0], first.embedding[2])
    again = cache.encode(["a cat"], encoder)
    assert len(encoder.calls) == 1 and torch.equal(again.embedding[0], first.embedding[0])
    # A second worker (empty LRU) finds it in Redis.
    other = TextEncodingCache(redis, model_id, ttl_s=60, lru_size=8)
    assert torch.equal(other.encode(["a dog"], encoder).tokens, first.tokens[1:2])
    assert len(encoder.calls) == 1
    assert 0 < redis.ttl(cache.key("a cat")) <= 60
    # Another model never shares entries.
    TextEncodingCache(redis, model_id + "-other", ttl_s=60, lru_size=8).encode(["a dog"], encoder)
    assert len(encoder.calls) == 2


def test_normalization_is_what_clip_tokenization_ignores() -> None:
    assert normalize_prompt("  A\tRed   CUBE \n") == "a red cube"
    assert normalize_prompt("a red cube") != normalize_prompt("a red cube.")


def test_normalized_prompts_tokenize_identically() -> None:
    import open_clip

    tokenizer = open_clip.SimpleTokenizer(context_length=32)
    for prompt in ["  A\tRed   CUBE \n", "Two  BLUE circles, on the Left"]:
        assert torch.equal(tokenizer([prompt]), tokenizer([normalize_prompt(prompt)]))
