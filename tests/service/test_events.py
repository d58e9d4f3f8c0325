"""GET /jobs/{id}/events over real HTTP (uvicorn), with a real worker process on the tiny model
with random weights and a real Redis, API keys on: the stream from queued to the final state,
previews only for a listener who asks, a reconnect with Last-Event-ID, and tenancy."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from PIL import Image
from redis import Redis

from contract.api_keys import ApiKeyStore
from contract.keys import Keys
from contract.settings import Settings
from tests.service.conftest import service_settings
from tests.workers.harness import steps

pytestmark = pytest.mark.slow  # a worker process and uvicorn for the module


@dataclass
class Event:
    event: str
    id: str | None
    data: Any


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return service_settings(
        tmp_path_factory,
        "sse",
    )


@pytest.fixture(scope="module")
def keys(settings: Settings) -> Keys:
    return Keys(settings.key_prefix)


@pytest.fixture(scope="module")
def auth(redis: Redis, keys: Keys) -> dict[str, str]:
    token, _ = ApiKeyStore(redis, keys).create("events")
    return {"Authorization": f"Bearer {token}"}


def submit(api: str, auth: dict[str, str], decoder_steps: int, **body: Any) -> str:
    job = {"prompt": "a red circle", "size": "64x64", **steps(decoder_steps), **body}
    response = httpx.post(f"{api}/generate", json=job, headers=auth, timeout=10)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def events(response: httpx.Response, stop_after: str | None = None) -> Iterator[Event]:
    """Parse a text/event-stream body (comments, ``retry:`` lines skipped)."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in fields:
                event = Event(fields.get("event", "message"), fields.get("id"), json.loads(fields["data"]))
                yield event
                if event.event == stop_after:
                    return
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value


def stream(api: str, job_id: str, auth: dict[str, str], **params: Any) -> list[Event]:
    headers = {**auth, **params.pop("headers", {})}
    with httpx.stream(
        "GET", f"{api}/jobs/{job_id}/events", params=params, headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(events(response))


def test_a_stream_runs_from_queued_to_the_final_state(
    api: str, auth: dict[str, str], keys: Keys, redis: Redis
) -> None:
    job_id = submit(api, auth, decoder_steps=12)
    seen = stream(api, job_id, auth)
    names = [e.event for e in seen]
    assert names[0] in ("queued", "running") and names[-1] == "succeeded"
    assert "running" in names and names.count("succeeded") == 1
    progress = [e.data for e in seen if e.event == "progress"]
    assert progress, names
    fractions = [p["fraction"] for p in progress]
    assert fractions == sorted(fractions) and all(0.0 <= f <= 1.0 for f in fractions)
    assert {p["stage"] for p in progress} <= {"clip", "prior", "decoder"}
    ids = [int(e.id) for e in seen if e.event in ("progress", "succeeded") and e.id is not None]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    final = seen[-1].data
    assert final["id"] == job_id and final["status"] == "succeeded" and len(final["images"]) == 1
    image = httpx.get(final["images"][0]["url"], timeout=10)  # signed: no key needed
    assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == (64, 64)
    # Nobody asked for previews: the worker made none.
    assert "preview" not in names and not redis.exists(keys.preview(job_id))


def test_previews_come_to_a_listener_who_asks(
    api: str, auth: dict[str, str], keys: Keys, redis: Redis
) -> None:
    # A long job ahead keeps the watched one queued until its stream is open; other settings keep
    # the two out of one batch.
    ahead = submit(api, auth, decoder_steps=20, guidance={"decoder": 2.0})
    job_id = submit(api, auth, decoder_steps=40, n=2)
    seen = stream(api, job_id, auth, previews=1)
    assert seen[0].event == "queued" and seen[0].data["queue_position"] >= 1, seen[0]
    previews = [e.data for e in seen if e.event == "preview"]
    assert previews, [e.event for e in seen]
    for preview in previews:
        assert preview["image"].startswith("data:image/png;base64,")
        strip = Image.open(io.BytesIO(base64.b64decode(preview["image"].split(",", 1)[1])))
        assert strip.format == "PNG" and strip.size == (128, 64)  # the job's two images side by side
        assert preview["stage"] == "decoder" and 0 < preview["fraction"] <= 1
    assert [p["seq"] for p in previews] == sorted({p["seq"] for p in previews})
    assert seen[-1].event == "succeeded"
    assert not redis.exists(keys.preview(ahead))  # no listener, no preview


def test_a_reconnect_with_last_event_id_resumes_and_a_finished_stream_says_204(
    api: str, auth: dict[str, str]
) -> None:
    job_id = submit(api, auth, decoder_steps=40)
    url = f"{api}/jobs/{job_id}/events"
    with httpx.stream("GET", url, headers=auth, timeout=60) as response:
        first = list(events(response, stop_after="progress"))[-1]
    assert first.event == "progress" and first.id is not None  # then the client went away
    resumed = stream(api, job_id, auth, headers={"Last-Event-ID": first.id})
    assert resumed[0].event in ("running", "succeeded")  # the current state first
    progress_ids = [int(e.id or 0) for e in resumed if e.event == "progress"]
    assert all(i > int(first.id) for i in progress_ids)  # nothing seen before comes again
    assert resumed[-1].event == "succeeded" and resumed[-1].id is not None
    after_end = httpx.get(url, headers={**auth, "Last-Event-ID": resumed[-1].id}, timeout=10)
    assert after_end.status_code == 204
    again = stream(api, job_id, auth)  # a fresh stream of a finished job: its final state, at once
    assert [e.event for e in again] == ["succeeded"]


def test_another_keys_job_has_no_stream(api: str, auth: dict[str, str], redis: Redis, keys: Keys) -> None:
    job_id = submit(api, auth, decoder_steps=2)
    stranger, _ = ApiKeyStore(redis, keys).create("stranger")
    response = httpx.get(
        f"{api}/jobs/{job_id}/events", headers={"Authorization": f"Bearer {stranger}"}, timeout=10
    )
    assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found"
    assert httpx.get(f"{api}/jobs/{job_id}/events", timeout=10).status_code == 401
