"""The HTTP API against a real Redis, without a worker: validation, the error shape, idempotency,
queue limits, cancel of queued jobs, Redis down, metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from contract.settings import Settings
from service.main import create_app
from tests.conftest import free_port


@pytest.fixture
def settings(redis_url: str, queue_name: str, tmp_path: Path) -> Settings:
    # Keys off: these tests are about the API's answers; tests/service/test_auth.py covers keys.
    return Settings(
        redis_url=redis_url, queue=queue_name, storage_dir=tmp_path, max_queue_depth=3, require_api_keys=False
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "param"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 1001}, "prompt"),
        ({"prompt": "a", "n": 11}, "n"),
        ({"prompt": "a", "n": "many"}, "n"),
        ({"prompt": "a", "size": "100x100"}, "size"),
        ({"prompt": "a", "seed": -5}, "seed"),
        ({"prompt": "a", "steps": {"decoder": 1000}}, "steps.decoder"),
        ({"prompt": "a", "guidance": {"decoder": 99}}, "guidance.decoder"),
        ({"prompt": "a", "webhook": "file:///etc/passwd"}, "webhook"),
        ({"n": 1}, "prompt"),
        ({"prompt": ["a"]}, "prompt"),
    ],
)
def test_invalid_input_is_422_with_the_error_shape(
    client: TestClient, body: dict[str, Any], param: str
) -> None:
    error = assert_error(client.post("/generate", json=body), 422)
    assert error["param"] == param


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"\xff\xfe\x00", "application/json"),
        (b'["prompt"]', "application/json"),
        (b"null", "application/json"),
        (b'{"prompt": "a"}', "text/plain"),
        (b"", "application/json"),
    ],
)
def test_malformed_bodies_are_422_never_500(client: TestClient, content: bytes, content_type: str) -> None:
    assert_error(client.post("/generate", content=content, headers={"content-type": content_type}), 422)


def test_huge_bodies_are_413(client: TestClient) -> None:
    big = b'{"prompt": "' + b"a" * 200_000 + b'"}'
    assert_error(client.post("/generate", content=big, headers={"content-type": "application/json"}), 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while streaming
        yield b'{"prompt": "'
        for _ in range(100):
            yield b"a" * 1000
        yield b'"}'

    assert_error(
        client.post("/generate", content=chunks(), headers={"content-type": "application/json"}),
        413,
        "request_too_large",
    )


def test_unknown_jobs_routes_and_methods(client: TestClient) -> None:
    assert_error(client.get("/jobs/gen_doesnotexist"), 404, "job_not_found")
    assert_error(client.get("/jobs/..%2F..%2Fetc"), 404)
    assert_error(client.get("/jobs/gen_nope/images/0.png"), 404, "job_not_found")
    assert_error(client.delete("/jobs/gen_nope"), 404, "job_not_found")
    assert_error(client.get("/no/such/route"), 404, "not_found")
    response = client.put("/generate", json={"prompt": "a"})
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


def test_submit_answers_202_with_location_and_a_seed(client: TestClient) -> None:
    response = client.post("/generate", json={"prompt": "a red cube", "size": "64x64", "n": 2})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued" and job["queue_position"] == 1
    assert 0 <= job["params"]["seed"] < 2**31 and job["params"]["n"] == 2
    assert len(job["id"]) >= 20  # unguessable
    again = client.get(response.headers["location"]).json()
    assert again["id"] == job["id"] and again["params"] == job["params"]
    # The same request without a seed gets another random seed, and another id.
    other = client.post("/generate", json={"prompt": "a red cube", "size": "64x64", "n": 2}).json()
    assert other["id"] != job["id"]


def test_an_explicit_seed_is_kept(client: TestClient) -> None:
    job = client.post("/generate", json={"prompt": "a", "seed": 1234}).json()
    assert job["params"]["seed"] == 1234


def test_idempotent_resubmit_returns_the_same_job(client: TestClient) -> None:
    body = {"prompt": "a lighthouse", "size": "64x64"}
    first = client.post("/generate", json=body, headers={"Idempotency-Key": "order-17"})
    second = client.post("/generate", json=body, headers={"Idempotency-Key": "order-17"})
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert first.json()["params"]["seed"] == second.json()["params"]["seed"]
    assert second.headers["idempotent-replayed"] == "true"
    other = client.post("/generate", json=body, headers={"Idempotency-Key": "order-18"})
    assert other.json()["id"] != first.json()["id"]
    # Same key, different body: 422 (IETF Idempotency-Key draft), and no new job.
    error = assert_error(
        client.post("/generate", json={**body, "n": 2}, headers={"Idempotency-Key": "order-17"}),
        422,
        "idempotency_key_reused",
    )
    assert error["param"] == "Idempotency-Key"


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there"])
def test_bad_idempotency_keys_are_422(client: TestClient, key: str) -> None:
    assert_error(client.post("/generate", json={"prompt": "a"}, headers={"Idempotency-Key": key}), 422)


def test_queue_full_is_429_with_retry_after(client: TestClient, settings: Settings) -> None:
    for i in range(settings.max_queue_depth):
        assert client.post("/generate", json={"prompt": f"job {i}"}).status_code == 202
    response = client.post("/generate", json={"prompt": "one too many"})
    assert_error(response, 429, "queue_full")
    assert int(response.headers["retry-after"]) > 0


def test_cancel_a_queued_job(client: TestClient) -> None:
    job = client.post("/generate", json={"prompt": "to cancel"}).json()
    response = client.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "canceled"
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "canceled"
    assert client.delete(f"/jobs/{job['id']}").status_code == 200  # idempotent
    assert_error(client.get(f"/jobs/{job['id']}/images/0.png"), 404, "image_not_found")


def test_image_of_an_unfinished_job_is_409(client: TestClient) -> None:
    job = client.post("/generate", json={"prompt": "wait for it"}).json()
    assert_error(client.get(f"/jobs/{job['id']}/images/0.png"), 409, "job_not_finished")


def test_webhooks_need_a_configured_secret(client: TestClient) -> None:
    error = assert_error(
        client.post("/generate", json={"prompt": "a", "webhook": "https://example.com/h"}),
        422,
        "webhooks_disabled",
    )
    assert error["param"] == "webhook"


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:9101/metrics",
        "http://localhost:6379/",
        "http://10.0.0.7/hook",
        "http://[::1]/hook",
        "http://[::ffff:192.168.1.1]/hook",
    ],
)
def test_webhooks_to_private_addresses_are_refused(settings: Settings, target: str) -> None:
    webhooks_on = settings.model_copy(update={"webhook_secret": SecretStr("k" * 32)})
    with TestClient(create_app(webhooks_on)) as client:
        error = assert_error(client.post("/generate", json={"prompt": "a", "webhook": target}), 422)
        assert error["code"] == "webhook_not_allowed" and error["param"] == "webhook"
        # A public address is queued; so is anything once the operator allows private networks.
        assert (
            client.post("/generate", json={"prompt": "a", "webhook": "https://93.184.215.14/h"}).status_code
            == 202
        )
    allowed = webhooks_on.model_copy(update={"webhook_allow_private": True})
    with TestClient(create_app(allowed)) as client:
        assert client.post("/generate", json={"prompt": "a", "webhook": target}).status_code == 202


def test_health_ready_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert_error(client.get("/readyz"), 503, "no_workers")  # Redis answers, but no worker
    client.post("/generate", json={"prompt": "counted"})
    text = client.get("/metrics").text
    assert 'unclip_http_requests_total{method="POST",route="/generate",status="202"} 1.0' in text
    assert 'route="/readyz",status="503"' in text
    assert "unclip_queue_depth 1.0" in text


def test_openapi_docs(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/generate",
        "/jobs/{job_id}",
        "/jobs/{job_id}/images/{index}.png",
        "/jobs/{job_id}/cancel",
    } <= set(paths)


def test_redis_down_is_503(tmp_path: Path) -> None:
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", storage_dir=tmp_path, require_api_keys=False
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200  # the process itself is fine
        for response in (
            client.post("/generate", json={"prompt": "a"}),
            client.get("/jobs/gen_whatever"),
            client.get("/readyz"),
        ):
            assert_error(response, 503, "redis_unavailable")
            assert int(response.headers["retry-after"]) > 0
        assert client.get("/metrics").status_code == 200  # the depth gauge is left out


def test_the_apps_settings_reach_the_routes_without_dependency_overrides(
    client: TestClient, settings: Settings
) -> None:
    """Any entry in ``dependency_overrides`` makes FastAPI rebuild every dependency of every
    request from its signature (service/app_settings.py); the settings given to create_app
    must still be the ones the routes see (here: its queue depth of 3)."""
    assert client.app.dependency_overrides == {}  # type: ignore[attr-defined]
    for i in range(settings.max_queue_depth):
        assert client.post("/generate", json={"prompt": f"job {i}"}).status_code == 202
    assert_error(client.post("/generate", json={"prompt": "one too many"}), 429, "queue_full")
