"""Webhook delivery: what ``JobStore.record_final`` queued when a job ended.

The one caller that records a job's final state queues its webhook on the Redis outbox
(``contract.jobs``). :class:`WebhookSender`, a thread of every worker, takes deliveries off the
outbox (into its own in-flight list, so a dead worker's deliveries are requeued by the reaper),
signs and POSTs them, retrying with exponential backoff. Delivery happens off the sampling path
and its failure never touches the job.

Signature: ``X-Unclip-Signature: sha256=<hex HMAC-SHA256 of the raw body, key UNCLIP_WEBHOOK_SECRET>``.
The body carries ``timestamp`` (unix seconds, also sent as ``X-Unclip-Timestamp``), so the
signature covers it: receivers verify the HMAC over the exact bytes, then reject stale timestamps.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from redis import Redis

from contract.keys import Keys
from contract.webhook_targets import refusal_after_dns

log = logging.getLogger("unclip.webhooks")

SIGNATURE_HEADER = "X-Unclip-Signature"
TIMESTAMP_HEADER = "X-Unclip-Timestamp"
_RETRYABLE = {408, 425, 429, 500, 502, 503, 504}


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, body), signature)


class WebhookSender(threading.Thread):
    """Delivers queued webhooks with a few concurrent senders."""

    def __init__(
        self,
        connection: Redis,
        keys: Keys,
        worker_name: str,
        *,
        secret: str,
        timeout_s: float,
        max_attempts: int,
        backoff_s: float,
        stop: threading.Event,
        concurrency: int = 4,
        allow_private: bool = False,
    ):
        super().__init__(name="webhook-sender", daemon=True)
        self.connection = connection
        self.outbox = keys.webhooks
        self.inflight = keys.webhooks_inflight(worker_name)
        self.secret = secret
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.stop_event = stop
        self.allow_private = allow_private
        self._slots = threading.BoundedSemaphore(concurrency)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="webhook")
        self._client = httpx.Client(timeout=timeout_s, follow_redirects=False)

    def run(self) -> None:
        while not self.stop_event.is_set():
            if not self._slots.acquire(timeout=1):
                continue
            try:
                raw = self.connection.blmove(self.outbox, self.inflight, 1, "LEFT", "RIGHT")
            except Exception:
                log.exception("webhook outbox read failed")
                self._slots.release()
                self.stop_event.wait(1)
                continue
            if raw is None:
                self._slots.release()
                continue
            self._pool.submit(self._deliver_and_release, raw)

    def close(self) -> None:
        """Stop taking deliveries; hand unfinished ones back to the outbox for another worker."""
        self.stop_event.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        while self.connection.lmove(self.inflight, self.outbox, "RIGHT", "LEFT"):
            pass

    def _deliver_and_release(self, raw: bytes | str) -> None:
        try:
            self.deliver(json.loads(raw))
        except Exception:
            log.exception("webhook delivery crashed")
        finally:
            self.connection.lrem(self.inflight, 1, raw)  # type: ignore[arg-type]
            self._slots.release()

    def deliver(self, delivery: dict[str, Any]) -> bool:
        """POST until a 2xx, a non-retryable answer, or ``max_attempts``; True when delivered.

        A target that is not a public address (checked before every attempt, with a fresh DNS
        lookup) is not POSTed to, unless ``allow_private`` (service/webhook_targets.py).
        """
        for attempt in range(self.max_attempts):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1) * (1 + random.random() / 4)
                if self.stop_event.wait(delay):
                    return False
            refusal = None if self.allow_private else refusal_after_dns(delivery["url"])
            if refusal is not None:
                log.warning("webhook %s not sent: %s", delivery["id"], refusal)
                return False
            status = self._post(delivery)
            if status is not None and 200 <= status < 300:
                return True
            if status is not None and status not in _RETRYABLE:
                log.warning("webhook %s refused with %d; not retried", delivery["id"], status)
                return False
        log.warning(
            "webhook %s to %s undelivered after %d attempts",
            delivery["id"],
            delivery["url"],
            self.max_attempts,
        )
        return False

    def _post(self, delivery: dict[str, Any]) -> int | None:
        timestamp = int(time.time())
        body = json.dumps(
            {
                "id": delivery["id"],
                "event": delivery["event"],
                "timestamp": timestamp,
                "job": delivery["job"],
            },
            separators=(",", ":"),
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "unclip-webhooks/1",
            SIGNATURE_HEADER: sign(self.secret, body),
            TIMESTAMP_HEADER: str(timestamp),
            "X-Unclip-Delivery": str(delivery["id"]),
        }
        try:
            return self._client.post(delivery["url"], content=body, headers=headers).status_code
        except httpx.HTTPError as exc:
            log.info("webhook %s attempt failed: %s", delivery["id"], exc)
            return None
