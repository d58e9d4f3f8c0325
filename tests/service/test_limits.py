"""The queue-depth limit and the per-key limits hold under concurrent submits: real HTTP through
uvicorn, many client threads, a real Redis (no worker, so nothing leaves the queue)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from contract.api_keys import ApiKeyStore
from contract.keys import Keys
from contract.settings import Settings
from tests.workers.harness import ApiServer


@pytest.fixture
def settings(redis_url: str, queue_name: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=redis_url, queue=queue_name, storage_dir=tmp_path, max_queue_depth=20)


@pytest.fixture
def api(settings: Settings) -> Iterator[str]:
    with ApiServer(settings) as server:
        yield server.url


def burst(api: str, token: str, count: int, **body: Any) -> list[httpx.Response]:
    """``count`` submits at once from 32 client threads."""

    def one(i: int) -> httpx.Response:
        return httpx.post(
            f"{api}/generate",
            json={"prompt": f"burst {i}", "size": "64x64", **body},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    with ThreadPoolExecutor(32) as pool:
        return list(pool.map(one, range(count)))


def codes(responses: list[httpx.Response]) -> Counter[str]:
    return Counter(
        "accepted" if r.status_code == 202 else f"{r.status_code} {r.json()['error']['code']}"
        for r in responses
    )


def job_records(redis: Redis, queue: str) -> int:
    """rq job hashes of this queue (a refused submit must leave none behind)."""
    return sum(
        1
        for key in redis.scan_iter("rq:job:gen_*", count=1000)
        if redis.hget(key, "origin") == queue.encode()
    )


def test_queue_depth_holds_under_a_burst(api: str, redis: Redis, settings: Settings) -> None:
    token, _ = ApiKeyStore(redis, Keys(settings.key_prefix)).create("burst", requests_per_minute=1000)
    responses = burst(api, token, 100)
    assert codes(responses) == Counter({"accepted": 20, "429 queue_full": 80})
    assert all(int(r.headers["retry-after"]) > 0 for r in responses if r.status_code == 429)
    assert redis.llen(f"rq:queue:{settings.queue}") == 20
    assert job_records(redis, settings.queue) == 20


def test_a_keys_unfinished_jobs_are_capped(api: str, redis: Redis, settings: Settings) -> None:
    keys = ApiKeyStore(redis, Keys(settings.key_prefix))
    capped, _ = keys.create("capped", max_active_jobs=5)
    other, _ = keys.create("other")
    assert codes(burst(api, capped, 40)) == Counter({"accepted": 5, "429 too_many_active_jobs": 35})
    assert codes(burst(api, other, 3)) == Counter({"accepted": 3})  # the cap is per key
    # A job that ends (here: canceled while queued) gives its place back.
    job_id = next(iter(redis.smembers(Keys(settings.key_prefix).active_jobs(keys.list()[0].id)))).decode()
    headers = {"Authorization": f"Bearer {capped}"}
    assert httpx.delete(f"{api}/jobs/{job_id}", headers=headers, timeout=10).status_code == 200
    assert codes(burst(api, capped, 3)) == Counter({"accepted": 1, "429 too_many_active_jobs": 2})
    assert job_records(redis, settings.queue) == 5 + 3 + 1


def test_a_keys_images_per_minute_hold_under_a_burst(api: str, redis: Redis, settings: Settings) -> None:
    token, _ = ApiKeyStore(redis, Keys(settings.key_prefix)).create("images", images_per_minute=7)
    assert codes(burst(api, token, 15, n=1)) == Counter({"accepted": 7, "429 image_rate_limited": 8})
    response = burst(api, token, 1, n=2)[0]
    assert response.status_code == 429 and response.json()["error"]["code"] == "image_rate_limited"
    assert 1 <= int(response.headers["retry-after"]) <= 60
    too_big = burst(api, token, 1, n=8)[0]  # more than a minute's worth can never pass
    assert too_big.status_code == 429 and "8 images" in too_big.json()["error"]["message"]
