"""Service and worker configuration: one pydantic-settings class, environment prefix ``UNCLIP_``.

Built on first use through :func:`get_settings` (never at import time), so tests can set the
environment or override the FastAPI dependency before anything reads it.
"""

from __future__ import annotations

import json
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Values that show a secret was copied from an example instead of generated.
_PLACEHOLDER_SECRETS = {"changethis", "changeme", "secret", "password", "webhook-secret", "test"}
_MIN_SECRET_LENGTH = 16
# List settings, read from the environment as commas or JSON (Settings._split_list).
UNetStages = Annotated[tuple[Literal["decoder", "sr256", "sr1024"], ...], NoDecode]
DeviceTypes = Annotated[tuple[Literal["cpu", "cuda"], ...], NoDecode]


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
    max_wait_ms: int = Field(
        default=50,
        ge=0,
        le=60_000,
        description="how long a batch that has company waits for more (workers/batching.py)",
    )
    batch_wait_alone: bool = Field(
        default=False,
        description="a job with no compatible job queued behind it waits max_wait_ms too; off, it "
        "starts at once, so at low load no job waits for company that is not coming",
    )
    # -- the model ----------------------------------------------------------------------------
    weights: str | None = Field(default=None, description="None: bundled model; 'random:tiny'; or a dir")
    device: str = Field(default="auto", description="'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1'")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    text_cache_ttl_s: int = Field(default=7 * 24 * 3600, ge=1)
    text_cache_size: int = Field(default=1024, ge=0, description="in-process LRU entries (0 disables)")
    # -- speed: the fast path's switches (models/execution.py; `make bench` measures each) -----
    fused_attention: bool = Field(default=True, description="UNet attention on tokens (fused SDPA kernel)")
    channels_last: bool = Field(default=True, description="UNet weights and activations in NHWC")
    channels_last_devices: DeviceTypes = Field(
        default=("cpu",),
        description="device types channels_last applies to (CUDA's GroupNorm converts a "
        "channels-last map to NCHW and back around every norm)",
    )
    autocast: Literal["off", "bfloat16"] = Field(
        default="bfloat16", description="bfloat16 autocast of autocast_stages where the device has bf16"
    )
    autocast_stages: UNetStages | None = Field(
        default=None,
        description="the UNets that autocast (comma-separated, or 'none'); unset or 'auto': the "
        "device's measured default, every UNet on a CPU with native bf16, sr256 and sr1024 on a GPU",
    )
    cast_weights_once: bool = Field(
        default=True,
        description="autocast stages keep a bf16 copy of their conv/linear weights instead of "
        "casting them in every forward (same images)",
    )
    compile_unets: bool = Field(
        default=False,
        description="torch.compile the UNets, warmed up at start for each batch bucket up to max_batch "
        "(minutes per network and bucket on a CPU; Inductor's cache keeps them across restarts)",
    )
    compile_stages: UNetStages = Field(
        default=("decoder", "sr256", "sr1024"), description="the UNets that compile_unets compiles"
    )
    compile_cache_dir: Path | None = Field(
        default=None,
        description="where Inductor keeps compiled UNets, so a restarted worker loads them instead of "
        "compiling again (TORCHINDUCTOR_CACHE_DIR; an operator's own value of that wins); None: "
        "torch's default, /tmp/torchinductor_<user>, which a new container does not have",
    )
    cuda_graphs: bool = Field(default=False, description="on CUDA: CUDA graphs for fixed batch buckets")
    micro_batch_sr256: int = Field(default=4, ge=0, le=256, description="rows run together (0: all)")
    micro_batch_sr1024: int = Field(default=1, ge=0, le=256, description="rows run together (0: all)")
    micro_batch_devices: DeviceTypes = Field(
        default=("cpu",),
        description="device types the micro-batches apply to; elsewhere every stage runs whole (a "
        "GPU's throughput grows with the batch; add cuda where a GPU runs out of memory)",
    )
    native_norms_on_gpu: bool = Field(
        default=False,
        description="on CUDA, GroupNorm takes half-precision maps as they are (float32 accumulation "
        "inside the kernel) instead of through float32 copies; off until measured on a GPU",
    )
    fold_scale_shift: bool = Field(
        default=True,
        description="one-row forwards fold a residual block's scale-shift into its GroupNorm "
        "(one pass over the map instead of three; the same images within rounding)",
    )
    in_place_activations: bool = Field(
        default=True,
        description="the UNets' SiLUs and residual sums write over maps nothing reads again "
        "(the same numbers; a memory-bound pass over one buffer instead of two)",
    )
    fuse_embedding_projections: bool = Field(
        default=True,
        description="a UNet's residual blocks project the timestep embedding in one matmul per "
        "forward instead of one small matmul each (the same images within rounding)",
    )
    keep_freed_memory: bool = Field(
        default=True,
        description="glibc's malloc keeps freed tensor memory for reuse instead of unmapping it "
        "(models/host_memory.py; the worker keeps its peak memory between jobs)",
    )
    omp_wait_policy: Literal["passive", "active", "default"] = Field(
        default="passive",
        description="OpenMP's wait policy for the worker's threads (set before torch starts); passive "
        "keeps idle threads from spinning on shared or oversubscribed cores",
    )
    # -- results ------------------------------------------------------------------------------
    storage_dir: Path = Path("./var/images")
    result_ttl_s: int = Field(default=3600, ge=1, description="images and results expire after this")
    public_url: str | None = Field(default=None, description="base URL for image links in webhooks")
    # -- worker liveness ----------------------------------------------------------------------
    lease_ttl_s: int = Field(default=6, ge=2, le=300, description="a worker silent this long is dead")
    max_worker_lost_retries: int = Field(default=2, ge=0, le=20)
    worker_metrics_port: int = Field(
        default=9101, ge=0, le=65535, description="0 disables; taken: the next free port above it"
    )
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
    http_keep_alive_s: int = Field(
        default=75,
        ge=1,
        le=3600,
        description="how long the API keeps an idle connection open; longer than clients' and load "
        "balancers' idle timeouts (httpx 5 s, AWS ALB 60 s), so the server is never the side that "
        "closes a connection a client is reusing (a reset, seen by clients as a transport error)",
    )
    # -- API keys, tenancy, limits (docs/operations.md) ---------------------------------------
    require_api_keys: bool = Field(
        default=True,
        description="False: anyone who reaches the API may use it, as one tenant (local development "
        "only; `unclip serve` defaults to it; a warning is logged at start-up)",
    )
    url_signing_secret: SecretStr | None = Field(
        default=None,
        description="HMAC key of signed image URLs; unset: a random key kept in Redis and shared by "
        "every API process and worker",
    )
    signed_url_ttl_s: int = Field(
        default=3600, ge=60, le=7 * 24 * 3600, description="image URLs work this long"
    )
    key_requests_per_minute: int = Field(
        default=600, ge=1, description="per key, unless the key sets its own"
    )
    key_images_per_minute: int = Field(default=120, ge=1, description="per key, unless the key sets its own")
    key_max_active_jobs: int = Field(
        default=50, ge=1, description="jobs a key may have queued or running at once, unless it sets its own"
    )
    max_multipart_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1024, description="a whole multipart body (uploads and fields)"
    )
    max_multipart_parts: int = Field(
        default=32,
        ge=1,
        le=1000,
        description="parts of one multipart body (a text diff may repeat angles 16 times)",
    )
    request_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="until a response starts (a slow body included): then 408/503",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins allowed to call the API from a browser (comma-separated); empty: CORS off",
    )
    openai_wait_s: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="how long POST /v1/images/* waits for its job before 504 with the job id; unset, "
        "and at most: just under request_timeout_s (raise both for long CPU generations)",
    )
    reaper_interval_s: float = Field(
        default=1.0, ge=0, le=60, description="the API's pass over dead workers' jobs (0: only workers reap)"
    )
    # -- worker processes ---------------------------------------------------------------------
    shutdown_grace_s: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="on SIGTERM, how long the running batch may go on; "
        "then its jobs go back to the queue and the worker exits",
    )
    worker_threads: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="torch threads per worker; 0: the host's cores / its live workers",
    )
    worker_slots_dir: Path = Field(
        default=Path(tempfile.gettempdir()) / "unclip-workers",
        description="lock files that count this host's workers (for their share of the cores)",
    )

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

    @field_validator(
        "cors_origins",
        "autocast_stages",
        "compile_stages",
        "micro_batch_devices",
        "channels_last_devices",
        mode="before",
    )
    @classmethod
    def _split_list(cls, value: object, info: ValidationInfo) -> object:
        """Lists from the environment, comma-separated (``UNCLIP_COMPILE_STAGES=decoder,sr256``,
        ``UNCLIP_CORS_ORIGINS=https://a.example,https://b.example``); a JSON list works too."""
        if isinstance(value, str):
            text = value.strip()
            if info.field_name == "autocast_stages" and text.lower() in ("", "auto", "none"):
                return None if text.lower() != "none" else []  # unset/auto: the device's default
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
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
