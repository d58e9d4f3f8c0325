"""contract.settings: one class, UNCLIP_ environment variables, refused placeholder secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from contract.settings import Settings, get_settings


def test_reads_the_unclip_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNCLIP_REDIS_URL", "redis://example:6380/3")
    monkeypatch.setenv("UNCLIP_QUEUE", "gpu-a")
    monkeypatch.setenv("UNCLIP_MAX_BATCH", "16")
    monkeypatch.setenv("UNCLIP_MAX_WAIT_MS", "120")
    monkeypatch.setenv("UNCLIP_STORAGE_DIR", "/data/images")
    monkeypatch.setenv("UNCLIP_RESULT_TTL_S", "60")
    monkeypatch.setenv("UNCLIP_DEVICE", "cuda:1")
    monkeypatch.setenv("UNCLIP_DTYPE", "float16")
    monkeypatch.setenv("UNCLIP_WEIGHTS", "random:tiny")
    monkeypatch.setenv("UNCLIP_MAX_QUEUE_DEPTH", "7")
    monkeypatch.setenv("UNCLIP_WORKER_METRICS_PORT", "9200")
    monkeypatch.setenv("UNCLIP_WEBHOOK_SECRET", "k" * 32)
    settings = Settings()
    assert settings.redis_url == "redis://example:6380/3"
    assert settings.queue == "gpu-a" and settings.key_prefix == "unclip:gpu-a"
    assert (settings.max_batch, settings.max_wait_ms) == (16, 120)
    assert settings.storage_dir == Path("/data/images")
    assert settings.result_ttl_s == 60 and settings.record_ttl_s > 60
    assert (settings.device, settings.dtype, settings.weights) == ("cuda:1", "float16", "random:tiny")
    assert settings.max_queue_depth == 7 and settings.worker_metrics_port == 9200
    assert settings.webhook_secret is not None and settings.webhook_secret.get_secret_value() == "k" * 32


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "UNCLIP_REDIS_URL",
        "UNCLIP_QUEUE",
        "UNCLIP_WEIGHTS",
        "UNCLIP_WEBHOOK_SECRET",
        "UNCLIP_DEVICE",
    ):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.weights is None  # the bundled model
    assert settings.device == "auto"
    assert settings.worker_metrics_port == 9101
    assert settings.webhook_secret is None


@pytest.mark.parametrize("secret", ["changethis", "secret", "short"])
def test_refuses_placeholder_or_short_webhook_secrets(secret: str) -> None:
    with pytest.raises(ValidationError, match="UNCLIP_WEBHOOK_SECRET"):
        Settings(webhook_secret=secret)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_batch", 0),
        ("max_wait_ms", -1),
        ("queue", "has space"),
        ("redis_url", "http://x"),
        ("dtype", "int8"),
    ],
)
def test_refuses_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        Settings(**{field: value})


def test_get_settings_is_cached_and_built_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    get_settings.cache_clear()
    monkeypatch.setenv("UNCLIP_QUEUE", "lazy")
    try:
        assert get_settings() is get_settings()
        assert get_settings().queue == "lazy"
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("auto", None), ("none", ()), ("[]", ())])
def test_autocast_stages_default_to_the_device(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: tuple[str, ...] | None
) -> None:
    """Unset or ``auto``: the device's measured default (models.execution); ``none``: no UNet."""
    if value is not None:
        monkeypatch.setenv("UNCLIP_AUTOCAST_STAGES", value)
    assert Settings().autocast_stages == expected


@pytest.mark.parametrize("value", ["decoder", "decoder, sr256", '["decoder", "sr256"]'])
def test_stage_and_device_lists_read_commas_or_json(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """The form docs/benchmark.md gives (`UNCLIP_COMPILE_STAGES=decoder`) as well as a JSON list."""
    expected = tuple(stage for stage in ("decoder", "sr256") if stage in value)
    monkeypatch.setenv("UNCLIP_COMPILE_STAGES", value)
    monkeypatch.setenv("UNCLIP_AUTOCAST_STAGES", value)
    monkeypatch.setenv("UNCLIP_MICRO_BATCH_DEVICES", "cpu,cuda")
    monkeypatch.setenv("UNCLIP_CHANNELS_LAST_DEVICES", '["cpu", "cuda"]')
    settings = Settings()
    assert settings.compile_stages == expected and settings.autocast_stages == expected
    assert settings.micro_batch_devices == ("cpu", "cuda")
    assert settings.channels_last_devices == ("cpu", "cuda")
    monkeypatch.setenv("UNCLIP_COMPILE_STAGES", "decoder,sr512")
    with pytest.raises(ValidationError, match="compile_stages"):
        Settings()
