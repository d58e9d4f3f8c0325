"""Service and worker configuration: one pydantic-settings class, environment prefix ``UNCLIP_``.

Built on first use through :func:`get_settings` (never at import time), so tests can set the
environment or override the FastAPI dependency before anything reads it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values that show a secret was copied from an example instead of generated.
_PLACEHOLDER_SECRETS = {"changethis", "changeme", "secret", "password", "webhook-secret", "test"}
_MIN_SECRET_LENGTH = 16


class Settings(BaseSettings):
    """Every knob of the API and the workers. Each field is read from ``UNCLIP_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="UNCLIP_", extra="ignore", frozen=True)

    # -- Redis and the queue ------------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    queue: str = Field(default="unclip", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    max_queue_depth: int = Field(default=100, ge=1, description="waiting jobs beyond which submits get 429")
    retry_after_s: int = Field(default=5, ge=1, le=3600, description="Retry-After sent with 429 and 503")
    job_timeout_s: int = Field(default=900, ge=1, description="hard limit for one batch (rq job timeout)")
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=1)
    # -- batching -----------------------------------------------------------------------------
    max_batch: int = Field(default=8, ge=1, le=256, description="most images sampled in one batch")
    max_wait_ms: int = Field(default=50, ge=0, le=60_000, description="how long a batch waits to fill")
    # -- the model ----------------------------------------------------------------------------
    weights: str | None = Field(default=None, description="None: bundled model; 'random:tiny'; or a dir")
    device: str = Field(default="auto", description="'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1'")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    text_cache_ttl_s: int = Field(default=7 * 24 * 3600, ge=1)
    text_cache_size: int = Field(default=1024, ge=0, description="in-process LRU entries (0 disables)")
    # -- results ------------------------------------------------------------------------------
    storage_dir: Path = Path("./var/images")
    result_ttl_s: int = Field(default=3600, ge=1, description="images and results expire after this")
    public_url: str | None = Field(default=None, description="base URL for image links in webhooks")
    # -- worker liveness ----------------------------------------------------------------------
    lease_ttl_s: int = Field(default=6, ge=2, le=300, description="a worker silent this long is dead")
    max_worker_lost_retries: int = Field(default=2, ge=0, le=20)
    worker_metrics_port: int = Field(default=9101, ge=0, le=65535, description="0 disables")
    # -- webhooks -----------------------------------------------------------------------------
    webhook_secret: SecretStr | None = None
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=60)
    webhook_max_attempts: int = Field(default=6, ge=1, le=20)
    webhook_backoff_s: float = Field(default=0.5, gt=0, le=60)
    webhook_allow_private: bool = Field(
        default=False,
        description="let webhooks reach loopback, private and link-local addresses (receivers on your "
        "own network); off, only public addresses are POSTed to (service/webhook_targets.py)",
    )
    # -- HTTP ---------------------------------------------------------------------------------
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    log_level: str = "INFO"

    @field_validator("webhook_secret")
    @classmethod
    def _refuse_default_secret(cls, value: SecretStr | None) -> SecretStr | None:
        """Refuse a placeholder or short secret: a guessable key makes every signature forgeable."""
        if value is None:
            return None
        secret = value.get_secret_value()
        if secret.lower() in _PLACEHOLDER_SECRETS or len(secret) < _MIN_SECRET_LENGTH:
            raise ValueError(
                f"UNCLIP_WEBHOOK_SECRET must be a random string of at least {_MIN_SECRET_LENGTH} characters "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), not a placeholder"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("UNCLIP_REDIS_URL must start with redis://, rediss:// or unix://")
        return value

    @property
    def key_prefix(self) -> str:
        """Prefix of every Redis key this service owns (rq's keys keep rq's own ``rq:`` prefix)."""
        return f"unclip:{self.queue}"

    @property
    def record_ttl_s(self) -> int:
        """How long a finished job's record outlives its images, so a late fetch reads
        ``result_expired`` instead of ``job_not_found``."""
        return self.result_ttl_s + 24 * 3600


@lru_cache
def get_settings() -> Settings:
    """The process's settings (a FastAPI dependency; tests override it or clear the cache)."""
    return Settings()
