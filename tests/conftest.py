"""Fixtures shared by the test packages: a Redis URL and names that keep tests apart."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

# One database number for the test suite; each test also gets its own queue name (every key we
# and rq write for a queue is named after it), so tests never see each other's jobs.
TEST_REDIS_URL = os.environ.get("UNCLIP_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


@pytest.fixture
def redis_url() -> str:
    return TEST_REDIS_URL


@pytest.fixture
def queue_name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
