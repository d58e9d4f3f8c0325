"""API keys, tenancy, per-key idempotency, signed image URLs and the per-key request rate,
against a real Redis (no worker: a succeeded job is made by hand where one is needed)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from contract.api_keys import ApiKeyStore
from contract.jobs import JobStore
from contract.keys import Keys
from contract.settings import Settings
from contract.signing import load_signer
from contract.storage import LocalImageStorage
from service.main import create_app

PUBLIC_ROUTES = {"/healthz", "/readyz", "/metrics"}


@pytest.fixture
def settings(redis_url: str, queue_name: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=redis_url, queue=queue_name, storage_dir=tmp_path)


@pytest.fixture
def keys(redis: Redis, settings: Settings) -> ApiKeyStore:
    return ApiKeyStore(redis, Keys(settings.key_prefix))


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_code(response: Any) -> str:
    body = response.json()
    assert set(body["error"]) == {"code", "message", "param"}, body
    code: str = body["error"]["code"]
    return code


def submit(client: TestClient, token: str, **extra: Any) -> dict[str, Any]:
    headers = {**bearer(token), **extra.pop("headers", {})}
    response = client.post(
        "/generate", json={"prompt": "a red cube", "size": "64x64", **extra}, headers=headers
    )
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def test_requests_without_a_valid_key_are_401(client: TestClient, keys: ApiKeyStore) -> None:
    token, _ = keys.create("ok")
    cases = [
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer nope"},
        {"Authorization": f"Bearer {token[:-1]}x"},  # right id, wrong secret
        {"Authorization": "Bearer uk_aaaaaaaaaaaa_" + "A" * 43},  # unknown id
    ]
    for headers in cases:
        response = client.post("/generate", json={"prompt": "a"}, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert error_code(response) in ("missing_api_key", "invalid_api_key")
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/jobs/gen_x", headers=bearer("Bearer nope")).status_code == 401
    assert submit(client, token)["status"] == "queued"


def test_every_route_but_health_and_metrics_needs_a_key(client: TestClient) -> None:
    """Every operation in the OpenAPI schema: also catches a router included later without
    ``dependencies=AUTHENTICATED``."""
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) >= {"/healthz", "/readyz", "/generate", "/jobs/{job_id}"}
    for template, operations in paths.items():
        path = template.replace("{job_id}", "gen_x").replace("{index}", "0").replace("{fmt}", "gif")
        for method in operations:
            response = client.request(method.upper(), path)
            if template in PUBLIC_ROUTES:
                assert response.status_code != 401, (method, path)
            else:
                assert response.status_code == 401, (method, path, response.text)


def test_another_keys_job_is_404_everywhere(client: TestClient, keys: ApiKeyStore) -> None:
    alice, _ = keys.create("alice")
    mallory, _ = keys.create("mallory")
    job = submit(client, alice)
    for method, path in [
        ("GET", f"/jobs/{job['id']}"),
        ("GET", f"/jobs/{job['id']}/images/0.png"),
        ("DELETE", f"/jobs/{job['id']}"),
        ("POST", f"/jobs/{job['id']}/cancel"),
    ]:
        response = client.request(method, path, headers=bearer(mallory))
        assert response.status_code == 404 and error_code(response) == "job_not_found", (method, path)
    # The owner still sees it, still queued (mallory's cancel did nothing).
    assert client.get(f"/jobs/{job['id']}", headers=bearer(alice)).json()["status"] == "queued"


def test_idempotency_keys_are_scoped_per_api_key(client: TestClient, keys: ApiKeyStore) -> None:
    alice, _ = keys.create("alice")
    bob, _ = keys.create("bob")
    first = submit(client, alice, headers={"Idempotency-Key": "order-1"})
    again = submit(client, alice, headers={"Idempotency-Key": "order-1"})
    other = submit(client, bob, headers={"Idempotency-Key": "order-1"})
    assert again["id"] == first["id"]
    assert other["id"] != first["id"]  # bob's key is bob's: he never sees alice's job
    assert client.get(f"/jobs/{other['id']}", headers=bearer(alice)).status_code == 404


def test_a_revoked_key_stops_working_at_once(client: TestClient, keys: ApiKeyStore) -> None:
    token, key = keys.create("leaked")
    job = submit(client, token)
    assert keys.revoke(key.id) and keys.get(key.id).revoked  # type: ignore[union-attr]
    response = client.get(f"/jobs/{job['id']}", headers=bearer(token))
    assert response.status_code == 401 and error_code(response) == "invalid_api_key"
    assert not keys.revoke("nosuchkey123")
    assert [k.id for k in keys.list()].count(key.id) == 1


def make_succeeded(store: JobStore, job_id: str, storage_dir: Path) -> None:
    """What a worker leaves behind for a one-image job (the PNG bytes do not matter here)."""
    job = store.fetch(job_id)
    assert job is not None
    expires_at = time.time() + 600
    LocalImageStorage(storage_dir).put(job_id, 0, b"\x89PNG fake", expires_at)
    job.meta.update(images=1, expires_at=expires_at, finished_at=time.time())
    job.save_meta()  # type: ignore[no-untyped-call]
    job.set_status("finished")  # type: ignore[arg-type]


def test_image_urls_are_signed_and_expire(
    client: TestClient, keys: ApiKeyStore, redis: Redis, settings: Settings
) -> None:
    alice, _ = keys.create("alice")
    job = submit(client, alice)
    make_succeeded(JobStore(redis, settings), job["id"], settings.storage_dir)
    record = client.get(f"/jobs/{job['id']}", headers=bearer(alice)).json()
    url = record["images"][0]["url"]
    assert "expires=" in url and "sig=" in url
    # Anyone with the URL can fetch the image, without a key.
    response = client.get(url)
    assert response.status_code == 200 and response.content == b"\x89PNG fake"
    # A changed signature, or the signature on another image's path or on the job, is refused.
    tampered = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    assert client.get(tampered).status_code == 403
    assert error_code(client.get(url.replace("/images/0.png", "/images/1.png"))) == "invalid_signature"
    assert client.get(url.split("/images/")[0] + "?" + url.split("?")[1]).status_code == 403
    # Past its expiry it stops working.
    path = f"/jobs/{job['id']}/images/0.png"
    stale = load_signer(redis, settings).sign(path, now=time.time() - settings.signed_url_ttl_s - 5)
    response = client.get(stale)
    assert response.status_code == 403 and error_code(response) == "url_expired"


def test_signing_key_is_shared_through_redis(redis: Redis, settings: Settings) -> None:
    first, second = load_signer(redis, settings), load_signer(redis, settings)
    signed = first.sign("/jobs/gen_a/images/0.png")
    path, query = signed.split("?")
    params = dict(p.split("=", 1) for p in query.split("&"))
    assert second.verify(path, params["expires"], params["sig"]).value == "valid"


def test_the_request_rate_is_per_key_with_openai_headers(client: TestClient, keys: ApiKeyStore) -> None:
    slow, _ = keys.create("slow", requests_per_minute=3)
    other, _ = keys.create("other")
    for remaining in (2, 1, 0):
        response = client.get("/jobs/gen_none", headers=bearer(slow))
        assert response.status_code == 404
        assert response.headers["x-ratelimit-limit-requests"] == "3"
        assert response.headers["x-ratelimit-remaining-requests"] == str(remaining)
        assert response.headers["x-ratelimit-reset-requests"].endswith("s")
    response = client.get("/jobs/gen_none", headers=bearer(slow))
    assert response.status_code == 429 and error_code(response) == "rate_limited"
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert client.get("/jobs/gen_none", headers=bearer(other)).status_code == 404  # other keys unaffected


def test_keys_off_is_explicit_and_logged(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    open_settings = settings.model_copy(update={"require_api_keys": False})
    with (
        caplog.at_level(logging.WARNING, logger="unclip.api"),
        TestClient(create_app(open_settings)) as client,
    ):
        job = client.post("/generate", json={"prompt": "a"}).json()
        assert client.get(f"/jobs/{job['id']}").json()["id"] == job["id"]
    assert any("API keys are OFF" in r.getMessage() for r in caplog.records)


def test_health_and_metrics_need_no_key(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503  # no worker, but not 401
    assert client.get("/metrics").status_code == 200


def test_the_animation_url_is_signed_like_the_images(
    client: TestClient, keys: ApiKeyStore, redis: Redis, settings: Settings
) -> None:
    alice, _ = keys.create("alice")
    form = {"prompt_a": "a red circle", "prompt_b": "a blue square", "steps": "2", "size": "64x64"}
    response = client.post(
        "/interpolations", data=form, files={"animation": (None, "gif")}, headers=bearer(alice)
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    # What a worker leaves behind: two frames and the GIF of them.
    job = JobStore(redis, settings).fetch(job_id)
    assert job is not None
    expires_at = time.time() + 600
    storage = LocalImageStorage(settings.storage_dir)
    for k in range(2):
        storage.put(job_id, k, b"\x89PNG fake", expires_at)
    storage.put_file(job_id, "animation.gif", b"GIF89a fake", expires_at)
    job.meta.update(images=2, animation="gif", expires_at=expires_at, finished_at=time.time())
    job.save_meta()  # type: ignore[no-untyped-call]
    job.set_status("finished")  # type: ignore[arg-type]

    url = client.get(f"/jobs/{job_id}", headers=bearer(alice)).json()["animation"]
    assert f"/jobs/{job_id}/animation.gif?expires=" in url and "&sig=" in url
    response = client.get(url)  # no key
    assert response.status_code == 200 and response.content == b"GIF89a fake"
    assert response.headers["content-type"] == "image/gif"
    path = f"/jobs/{job_id}/animation.gif"
    assert error_code(client.get(path)) == "missing_api_key"  # unsigned, without a key
    assert (
        error_code(client.get(url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")))
        == "invalid_signature"
    )
    image_url = client.get(f"/jobs/{job_id}", headers=bearer(alice)).json()["images"][0]["url"]
    assert error_code(client.get(path + "?" + image_url.split("?")[1])) == "invalid_signature"
    stale = load_signer(redis, settings).sign(path, now=time.time() - settings.signed_url_ttl_s - 5)
    assert error_code(client.get(stale)) == "url_expired"
