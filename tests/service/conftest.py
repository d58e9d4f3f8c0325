"""Fixtures of the service tests that run the whole service: one worker process and one uvicorn
API per module, on that module's own module-scoped ``settings`` (built with
:func:`service_settings`); an API key on them; and a Redis client per module (wider than the
root conftest's per-test one, which module-scoped fixtures cannot use)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis

from contract.api_keys import ApiKeyStore
from contract.keys import Keys
from contract.settings import Settings
from tests.conftest import TEST_REDIS_URL
from tests.workers.harness import ApiServer, WorkerProcess, workers


def service_settings(tmp_path_factory: pytest.TempPathFactory, prefix: str, **fields: Any) -> Settings:
    """A module's service: the test database, a queue of its own, images in a temporary folder,
    tiny random weights on the CPU, batches of up to 8 gathered for 20 ms; ``fields`` override."""
    defaults: dict[str, Any] = {
        "redis_url": TEST_REDIS_URL,
        "queue": f"{prefix}-{uuid.uuid4().hex[:10]}",
        "storage_dir": tmp_path_factory.mktemp("images"),
        "weights": "random:tiny",
        "device": "cpu",
        "max_batch": 8,
        "max_wait_ms": 20,
    }
    return Settings(**{**defaults, **fields})


@pytest.fixture(scope="module")
def token(redis: Redis, settings: Settings) -> str:
    """A fresh API key of the module's service."""
    created, _ = ApiKeyStore(redis, Keys(settings.key_prefix)).create("tests")
    return created


@pytest.fixture(scope="module")
def redis() -> Iterator[Redis]:
    client = Redis.from_url(TEST_REDIS_URL)
    yield client
    client.close()


@pytest.fixture(scope="module")
def worker(
    settings: Settings, redis: Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    with workers(settings, [f"w-{uuid.uuid4().hex[:6]}"], tmp_path_factory.mktemp("logs"), redis) as started:
        yield started[0]


@pytest.fixture(scope="module")
def api(settings: Settings, worker: WorkerProcess) -> Iterator[str]:
    with ApiServer(settings) as server:
        yield server.url
