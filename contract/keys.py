"""Names of our Redis keys: cancel flags, idempotency keys, worker leases and owned sets, the
webhook outbox, the "final" markers and live previews (rq's own keys keep their ``rq:`` prefix)."""

from __future__ import annotations

import hashlib


class Keys:
    """Names of our Redis keys for one queue (rq's own keys keep their ``rq:`` prefix)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.leases = f"{prefix}:workers"  # set: names of workers that hold (or held) a lease
        self.webhooks = f"{prefix}:webhooks"  # list: webhook deliveries waiting for a sender

    def lease(self, worker: str) -> str:
        return f"{self.prefix}:lease:{worker}"

    def owned(self, worker: str) -> str:
        return f"{self.prefix}:owned:{worker}"

    def reaping(self, worker: str) -> str:
        return f"{self.prefix}:reaping:{worker}"

    def webhooks_inflight(self, worker: str) -> str:
        return f"{self.prefix}:webhooks:inflight:{worker}"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:cancel:{job_id}"

    def final(self, job_id: str) -> str:
        return f"{self.prefix}:final:{job_id}"

    def idempotency(self, key: str, owner: str | None = None) -> str:
        """Per API key: another key's identical ``Idempotency-Key`` is another binding."""
        scoped = key if owner is None else f"{owner}\x00{key}"
        return f"{self.prefix}:idem:{hashlib.sha256(scoped.encode()).hexdigest()}"

    def listening(self, job_id: str) -> str:
        """Set (with a short expiry) while a client streams the job's events with previews: the
        worker encodes previews only for jobs that have this key."""
        return f"{self.prefix}:listen:{job_id}"

    def preview(self, job_id: str) -> str:
        return f"{self.prefix}:preview:{job_id}"  # the latest preview (JSON with a base64 PNG)

    def intermediate_seen(self, job_id: str) -> str:
        return f"{self.prefix}:limbo:{job_id}"

    # -- API keys and their limits ------------------------------------------------------------
    @property
    def api_keys(self) -> str:
        return f"{self.prefix}:apikeys"  # set: ids of every key ever created

    def api_key(self, key_id: str) -> str:
        return f"{self.prefix}:apikey:{key_id}"  # hash: name, digest, limits, created/revoked

    def active_jobs(self, owner: str) -> str:
        return f"{self.prefix}:active:{owner}"  # set: the key's jobs not yet final

    def image_rate(self, owner: str) -> str:
        return f"{self.prefix}:imgrate:{owner}"  # sorted set: images submitted in the last minute

    @property
    def url_secret(self) -> str:
        return f"{self.prefix}:url-secret"  # the signing key of image URLs, when not configured
