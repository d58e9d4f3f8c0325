"""What fuzzing found between the OpenAPI schema and the API's answers, each closed: the
Idempotency-Key rules in the schema, 405 with a full Allow on every route, the documented 202 of
cancelling a running job, a deeply nested body, strict guidance numbers, and webhook hosts that
are metadata or private names (or resolve to private addresses) refused at submit. A real Redis,
no worker."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from redis import Redis

from contract.jobs import JobStore
from contract.schemas import JobStatusResponse
from contract.settings import Settings
from service.main import create_app

HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


@pytest.fixture
def settings(redis_url: str, queue_name: str, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        queue=queue_name,
        storage_dir=tmp_path,
        require_api_keys=False,
        webhook_secret=SecretStr("k" * 32),
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def schema(client: TestClient) -> dict[str, Any]:
    spec: dict[str, Any] = client.get("/openapi.json").json()
    return spec


def error_of(response: Any, status: int) -> dict[str, Any]:
    """The error of ``response``, in the shape of its route family (/v1's adds OpenAI's ``type``)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "param"} <= set(body["error"]), body
    error: dict[str, Any] = body["error"]
    return error


def submit(client: TestClient, **fields: Any) -> Any:
    return client.post("/generate", json={"prompt": "a red cube", "size": "64x64", **fields})


# -- Idempotency-Key ----------------------------------------------------------------------------


def test_the_idempotency_key_rules_are_in_the_schema_and_hold(
    client: TestClient, schema: dict[str, Any]
) -> None:
    (header,) = [p for p in schema["paths"]["/generate"]["post"]["parameters"] if p["in"] == "header"]
    assert header["name"].lower() == "idempotency-key"
    rules = header["schema"]
    assert (rules["minLength"], rules["maxLength"]) == (1, 255)
    for answer in ("idempotency_key_reused", "idempotency_key_in_use", "Idempotent-Replayed"):
        assert answer in header["description"]
    pattern = re.compile(rules["pattern"])
    for key in ("order-17", "~" * 255, "a:b/c=d"):
        assert pattern.fullmatch(key)
        assert (
            client.post("/generate", json={"prompt": "k"}, headers={"Idempotency-Key": key}).status_code
            == 202
        )
    for key in ("", "x" * 256, "with space", "tab\there"):
        assert not pattern.fullmatch(key)
        response = client.post("/generate", json={"prompt": "k"}, headers={"Idempotency-Key": key})
        assert error_of(response, 422)["param"] == "Idempotency-Key"


# -- methods ------------------------------------------------------------------------------------


def concrete(template: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: {"index": "0", "fmt": "gif"}.get(m.group(1), "gen_x"), template)


def test_every_route_answers_other_methods_with_405_and_every_allowed_method(
    client: TestClient, schema: dict[str, Any]
) -> None:
    for template, operations in schema["paths"].items():
        documented = {method.upper() for method in operations}
        for method in ["OPTIONS", *sorted(HTTP_METHODS - documented)]:
            response = client.request(method, concrete(template))
            error = error_of(response, 405)
            assert error["code"] == "method_not_allowed"
            assert set(response.headers["allow"].split(", ")) == documented, (method, template)


def test_options_on_a_job_names_get_and_delete(client: TestClient) -> None:
    assert client.options("/jobs/gen_x").headers["allow"] == "DELETE, GET"
    assert client.options("/jobs/gen_x/cancel").headers["allow"] == "POST"


# -- cancel, nesting, guidance ------------------------------------------------------------------


def test_cancelling_a_running_job_is_a_documented_202(
    client: TestClient, schema: dict[str, Any], redis_url: str, settings: Settings
) -> None:
    for path, method in (("/jobs/{job_id}", "delete"), ("/jobs/{job_id}/cancel", "post")):
        answers = schema["paths"][path][method]["responses"]
        assert {"200", "202", "404", "409"} <= set(answers)
        assert answers["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/JobStatusResponse")
    job_id = submit(client).json()["id"]
    job = JobStore(Redis.from_url(redis_url), settings).fetch(job_id)
    assert job is not None
    job.set_status("started")  # type: ignore[arg-type]  # as a worker leaves it
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 202
    record = JobStatusResponse.model_validate(response.json())
    assert record.status == "running" and record.cancel_requested


@pytest.mark.parametrize("body", ["[" * 10_000 + "]" * 10_000, '{"prompt": "a", "steps": ' + "[" * 10_000])
def test_a_deeply_nested_body_is_422_invalid_json(
    client: TestClient, schema: dict[str, Any], body: str
) -> None:
    assert "422" in schema["paths"]["/generate"]["post"]["responses"]
    response = client.post("/generate", content=body, headers={"Content-Type": "application/json"})
    assert error_of(response, 422)["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("guidance", "accepted"),
    [
        ({"decoder": "3"}, False),
        ({"prior": "4.0"}, False),
        ({"decoder": True}, False),
        ({"decoder": 3}, True),
        ({"decoder": 3.5, "prior": 0}, True),
    ],
)
def test_guidance_takes_numbers_not_numeric_strings(
    client: TestClient, guidance: dict[str, Any], accepted: bool
) -> None:
    response = submit(client, guidance=guidance)
    if accepted:
        assert response.status_code == 202, response.text
        assert response.json()["params"]["guidance"] == {"prior": None, "decoder": None} | {
            k: float(v) for k, v in guidance.items()
        }
    else:
        assert error_of(response, 422)["param"] == f"guidance.{next(iter(guidance))}"
    # The same as n, seed and steps do.
    for field, value in (("n", "2"), ("seed", "7"), ("steps", {"decoder": "8"})):
        assert error_of(submit(client, **{field: value}), 422)["code"] == "invalid_parameter"


# -- webhook hosts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://metadata.google.internal/computeMetadata/v1/instance/",
        "http://instance-data/latest/meta-data/",
        "http://redis:6379/",
        "http://svc.cluster.local/hook",
        "http://hooks.corp.internal/h",
    ],
)
def test_metadata_and_private_names_are_refused_at_submit(client: TestClient, url: str) -> None:
    error = error_of(submit(client, webhook=url), 422)
    assert error["code"] == "webhook_not_allowed" and error["param"] == "webhook"
    assert url.split("/")[2].split(":")[0].lower() in error["message"].lower()


def test_names_that_resolve_to_private_addresses_are_refused_at_submit(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = {"hooks.example.com": "10.0.0.5", "rebound.example.com": "169.254.169.254"}
    answers["public.example.com"] = "93.184.215.14"
    real = socket.getaddrinfo

    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        if host in answers:  # what a DNS server would answer for these names
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], 443))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for host, address in (("hooks.example.com", "10.0.0.5"), ("rebound.example.com", "169.254.169.254")):
        error = error_of(submit(client, webhook=f"https://{host}/h"), 422)
        assert error["code"] == "webhook_not_allowed" and address in error["message"]
    assert submit(client, webhook="https://public.example.com/h").status_code == 202
