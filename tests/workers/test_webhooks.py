"""workers.webhooks: signatures, retries with backoff, what is not retried, the outbox hand-back."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from redis import Redis

from contract.keys import Keys
from tests.conftest import free_port
from workers.webhooks import WebhookSender, sign, verify

SECRET = "s" * 32


class Script(BaseHTTPRequestHandler):
    """Answers POSTs with the next status in ``statuses`` (then 204), recording each body."""

    statuses: ClassVar[list[int]] = []
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        Script.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(Script.statuses.pop(0) if Script.statuses else 204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Script.statuses, Script.bodies = [], []
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Script)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


@pytest.fixture
def sender(redis_url: str, queue_name: str) -> Iterator[WebhookSender]:
    redis = Redis.from_url(redis_url)
    stop = threading.Event()
    yield WebhookSender(
        redis,
        Keys(f"unclip:{queue_name}"),
        "w",
        secret=SECRET,
        timeout_s=2,
        max_attempts=4,
        backoff_s=0.01,
        stop=stop,
        allow_private=True,  # the test receivers listen on 127.0.0.1
    )
    stop.set()
    redis.close()


def delivery(url: str) -> dict[str, Any]:
    return {
        "id": "whd_1",
        "url": url,
        "event": "job.succeeded",
        "job": {"id": "gen_1", "status": "succeeded"},
    }


def test_signature_round_trip() -> None:
    body = b'{"a":1}'
    assert verify(SECRET, body, sign(SECRET, body))
    assert not verify(SECRET, body + b" ", sign(SECRET, body))
    assert not verify("t" * 32, body, sign(SECRET, body))


def test_retries_retryable_answers_until_delivered(sender: WebhookSender, receiver: str) -> None:
    Script.statuses = [503, 429]
    assert sender.deliver(delivery(receiver)) is True
    assert len(Script.bodies) == 3


def test_a_refusal_is_not_retried(sender: WebhookSender, receiver: str) -> None:
    Script.statuses = [400]
    assert sender.deliver(delivery(receiver)) is False
    assert len(Script.bodies) == 1


def test_an_unreachable_receiver_gives_up_after_max_attempts(sender: WebhookSender) -> None:
    assert sender.deliver(delivery(f"http://127.0.0.1:{free_port()}/hook")) is False


def test_close_hands_unfinished_deliveries_back(sender: WebhookSender, redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    redis.rpush(sender.inflight, b"pending")
    sender.close()
    assert redis.lrange(sender.outbox, 0, -1) == [b"pending"]
    assert redis.llen(sender.inflight) == 0
    redis.close()


def test_private_targets_are_not_posted_to_unless_allowed(sender: WebhookSender, receiver: str) -> None:
    """The receiver listens on 127.0.0.1: refused by default (no POST), delivered when allowed."""
    sender.allow_private = False
    assert not sender.deliver(delivery(receiver))
    assert not sender.deliver(delivery(receiver.replace("127.0.0.1", "localhost")))
    assert Script.bodies == []
    sender.allow_private = True
    assert sender.deliver(delivery(receiver)) and len(Script.bodies) == 1
