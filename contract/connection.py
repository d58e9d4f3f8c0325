"""Reaching Redis: the start-up check both the API launcher and the workers make."""

from __future__ import annotations

from redis import Redis
from redis.exceptions import RedisError

REDIS_HINT = "start one with `redis-server --daemonize yes --port 6379`, or point UNCLIP_REDIS_URL at yours"


def check_redis(url: str) -> str | None:
    """None when Redis answers at ``url``, else why not."""
    try:
        Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2).ping()
    except RedisError as exc:
        return str(exc)
    return None


def as_text(value: bytes | str) -> str:
    """A Redis reply (bytes without ``decode_responses``) as text."""
    return value.decode() if isinstance(value, bytes) else value
