"""Signed image URLs: fetchable without the API key, until they expire.

``/jobs/<id>/images/<k>.png?expires=<unix s>&sig=<HMAC-SHA256(path, expires), base64url>``.
The signature covers the exact path and the expiry, so a URL opens one image of one job and
stops working at ``expires``. The key is ``UNCLIP_URL_SIGNING_SECRET`` or, when that is unset,
a random key created once in Redis (``SET NX``) and read by every API process and worker, so
the URLs a worker puts in a webhook verify on any API process.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import math
import secrets
import time

from redis import Redis

from contract.keys import Keys
from contract.settings import Settings


class Verdict(enum.Enum):
    VALID = "valid"
    EXPIRED = "expired"
    INVALID = "invalid"


class UrlSigner:
    """Signs and checks paths with one key."""

    def __init__(self, key: bytes, ttl_s: int):
        self.key = key
        self.ttl_s = ttl_s

    def _signature(self, path: str, expires: int) -> str:
        mac = hmac.new(self.key, f"{path}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def sign(self, path: str, now: float | None = None) -> str:
        """``path`` with its ``expires`` and ``sig`` query parameters."""
        expires = math.ceil((time.time() if now is None else now) + self.ttl_s)
        return f"{path}?expires={expires}&sig={self._signature(path, expires)}"

    def verify(self, path: str, expires: str, signature: str, now: float | None = None) -> Verdict:
        try:
            when = int(expires)
        except ValueError:
            return Verdict.INVALID
        if not hmac.compare_digest(self._signature(path, when), signature):
            return Verdict.INVALID
        return Verdict.EXPIRED if when <= (time.time() if now is None else now) else Verdict.VALID


def load_signer(connection: Redis, settings: Settings) -> UrlSigner:
    """The signer for ``settings``: the configured key, else the one kept in Redis."""
    if settings.url_signing_secret is not None:
        return UrlSigner(settings.url_signing_secret.get_secret_value().encode(), settings.signed_url_ttl_s)
    name = Keys(settings.key_prefix).url_secret
    connection.set(name, secrets.token_urlsafe(32), nx=True)
    stored = connection.get(name)
    assert stored is not None
    return UrlSigner(stored if isinstance(stored, bytes) else str(stored).encode(), settings.signed_url_ttl_s)
