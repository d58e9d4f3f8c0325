"""API keys: ``Authorization: Bearer uk_<id>_<secret>``, kept hashed in Redis, revocable live.

A key is an id (public, names the key in logs, job records and ``unclip keys list``) and a
secret of 256 random bits. Redis keeps only the SHA-256 of the secret (a plain digest suffices:
the secret is random, not a password) in the key's hash ``...:apikey:<id>``, with its name, its
own limits (None: the settings' defaults) and its revocation time. Every request reads the hash,
so a revocation takes effect on the next request, in every API process.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from redis import Redis
from redis.typing import EncodableT, FieldT

from contract.connection import as_text
from contract.keys import Keys

_TOKEN = re.compile(r"^uk_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$")
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
# A digest to compare against when the id is unknown, so both answers take the same work.
_NO_DIGEST = hashlib.sha256(b"no such key").hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One key's record (never its secret)."""

    id: str
    name: str
    created_at: float
    revoked_at: float | None = None
    requests_per_minute: int | None = None  # None: Settings.key_requests_per_minute
    images_per_minute: int | None = None  # None: Settings.key_images_per_minute
    max_active_jobs: int | None = None  # None: Settings.key_max_active_jobs

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _optional_int(value: str | None) -> int | None:
    return int(value) if value else None


class ApiKeyStore:
    """Create, list, revoke and check API keys."""

    def __init__(self, connection: Redis, keys: Keys):
        self.connection = connection
        self.keys = keys

    def create(
        self,
        name: str,
        *,
        requests_per_minute: int | None = None,
        images_per_minute: int | None = None,
        max_active_jobs: int | None = None,
    ) -> tuple[str, ApiKey]:
        """A new key: its token (shown once; only its digest is stored) and its record."""
        key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
        secret = secrets.token_urlsafe(32)
        record = ApiKey(
            id=key_id,
            name=name,
            created_at=time.time(),
            requests_per_minute=requests_per_minute,
            images_per_minute=images_per_minute,
            max_active_jobs=max_active_jobs,
        )
        fields: dict[FieldT, EncodableT] = {
            "name": name,
            "digest": _digest(secret),
            "created_at": repr(record.created_at),
            "requests_per_minute": "" if requests_per_minute is None else str(requests_per_minute),
            "images_per_minute": "" if images_per_minute is None else str(images_per_minute),
            "max_active_jobs": "" if max_active_jobs is None else str(max_active_jobs),
        }
        with self.connection.pipeline() as pipe:
            pipe.hset(self.keys.api_key(key_id), mapping=fields)
            pipe.sadd(self.keys.api_keys, key_id)
            pipe.execute()
        return f"uk_{key_id}_{secret}", record

    def get(self, key_id: str) -> ApiKey | None:
        return self._record(key_id, self._fields(key_id))

    def _fields(self, key_id: str) -> dict[str, str]:
        raw = self.connection.hgetall(self.keys.api_key(key_id))
        return {as_text(name): as_text(value) for name, value in raw.items()}

    def list(self) -> list[ApiKey]:
        ids = sorted(as_text(i) for i in self.connection.smembers(self.keys.api_keys))
        records = [self.get(key_id) for key_id in ids]
        return sorted((r for r in records if r is not None), key=lambda r: r.created_at)

    def revoke(self, key_id: str) -> bool:
        """Revoke ``key_id`` (from the next request on); False when there is no such key."""
        if not self.connection.exists(self.keys.api_key(key_id)):
            return False
        self.connection.hsetnx(self.keys.api_key(key_id), "revoked_at", repr(time.time()))
        return True

    def authenticate(self, token: str) -> ApiKey | None:
        """The live key whose token this is, or None (malformed, unknown, wrong secret, revoked).

        The secret's digest is compared with ``hmac.compare_digest`` (constant time), also when
        the id is unknown, so timing says nothing about which part was wrong.
        """
        match = _TOKEN.match(token)
        if match is None:
            return None
        key_id, secret = match.groups()
        fields = self._fields(key_id)
        stored = fields.get("digest") or _NO_DIGEST
        if not hmac.compare_digest(stored, _digest(secret)) or not fields:
            return None
        record = self._record(key_id, fields)
        return record if record is not None and not record.revoked else None

    @staticmethod
    def _record(key_id: str, fields: dict[str, str]) -> ApiKey | None:
        if not fields:
            return None
        revoked = fields.get("revoked_at")
        return ApiKey(
            id=key_id,
            name=fields.get("name", ""),
            created_at=float(fields.get("created_at", "0")),
            revoked_at=float(revoked) if revoked else None,
            requests_per_minute=_optional_int(fields.get("requests_per_minute")),
            images_per_minute=_optional_int(fields.get("images_per_minute")),
            max_active_jobs=_optional_int(fields.get("max_active_jobs")),
        )
