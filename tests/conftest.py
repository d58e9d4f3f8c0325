"""Fixtures shared by the test packages: a Redis URL and names that keep tests apart, a Redis
client, default settings and a job store on them, and one torch thread for heavy modules.

A test module that needs other settings defines its own ``settings`` fixture; ``store`` then
uses that one (pytest's fixture overriding)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from redis import Redis

    from contract.jobs import JobStore
    from contract.settings import Settings

# One intra-op thread for torch in the test process and in every process it starts (the CLI runs,
# training replicas, workers), unless the caller set a number. The suite runs on two cores shared
# with other work, where two torch threads per process make a CPU step several times slower than
# one: tests/models without the slow tests took 349 s with torch's default threads and 176 s
# with one (load average about 5). Set here, before any test module imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

# One database number for the test suite; each test also gets its own queue name (every key we
# and rq write for a queue is named after it), so tests never see each other's jobs.
TEST_REDIS_URL = os.environ.get("UNCLIP_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


@pytest.fixture
def redis_url() -> str:
    return TEST_REDIS_URL


@pytest.fixture
def queue_name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    from redis import Redis

    client = Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def settings(redis_url: str, queue_name: str, tmp_path: Path) -> Settings:
    """The defaults on the test database, this test's queue, images under its tmp_path."""
    from contract.settings import Settings

    return Settings(redis_url=redis_url, queue=queue_name, storage_dir=tmp_path)


@pytest.fixture
def store(redis: Redis, settings: Settings) -> JobStore:
    from contract.jobs import JobStore

    return JobStore(redis, settings)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    The suite shares two cores with other work; two torch threads on a busy machine run a CPU
    step several times slower than one (the 256x256 adherence evaluation: 19 s for 8 images with
    one thread, 54 s with two, load average 2.5)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
