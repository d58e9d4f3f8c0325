"""The limits on what a client controls over HTTP: the request time limit (a slow body, a slow
handler), CORS (off unless origins are set) and the multipart part count. Real HTTP through
uvicorn, a real Redis (no worker)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from PIL import Image

from contract.settings import Settings
from service.main import create_app
from tests.conftest import free_port
from tests.workers.harness import REPO, ApiServer, wait_for

LIMIT_S = 0.5  # the request time limit of these tests (only ever waited for, never measured)
ALLOWED = "https://app.example"


@pytest.fixture
def settings(redis_url: str, queue_name: str, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        queue=queue_name,
        storage_dir=tmp_path,
        require_api_keys=False,
        request_timeout_s=LIMIT_S,
        reaper_interval_s=0,
    )


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "param"}, body
    assert body["error"]["code"] == code, body
    error: dict[str, Any] = body["error"]
    return error


def raw_exchange(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` on a fresh connection, read until the server closes it: (status, headers,
    body). The socket timeout only bounds a failing test; nothing is timed."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    return int(status_line.split()[1]), headers, body


# -- the request time limit ----------------------------------------------------------------------


def test_a_body_that_stops_arriving_is_408_and_the_connection_closes(settings: Settings) -> None:
    with ApiServer(settings) as server:
        body = json.dumps({"prompt": "a red cube", "size": "64x64"}).encode()
        head = (
            f"POST /generate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        status, headers, answer = raw_exchange(server.url, head + body[:10])  # the rest never comes
        assert status == 408
        assert headers["connection"] == "close"
        error = json.loads(answer)["error"]
        assert error["code"] == "request_timeout" and f"{LIMIT_S:g} s" in error["message"]
        # Nothing was queued, and the server still answers.
        assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200


def test_a_hung_dependency_is_503_with_retry_after(settings: Settings) -> None:
    """Redis accepts the connection and never answers (the client's own timeout is 5 s): the API
    answers at its request time limit instead, for sync routes (in threads) as for the rest."""
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(64)
        port = black_hole.getsockname()[1]
        hung = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
        with ApiServer(hung) as server:
            for response in (
                httpx.get(f"{server.url}/jobs/gen_whatever", timeout=30),
                httpx.post(f"{server.url}/generate", json={"prompt": "a", "size": "64x64"}, timeout=30),
            ):
                assert_error(response, 503, "server_timeout")
                assert int(response.headers["retry-after"]) == settings.retry_after_s
            assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200


def slow_app(settings: Settings) -> FastAPI:
    """The real app plus two test routes: one that never answers, one whose answer starts at once
    and ends after more than the time limit."""
    app = create_app(settings)

    async def never() -> None:
        await asyncio.Event().wait()

    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first "
            await asyncio.sleep(3 * LIMIT_S)
            yield b"last"

        return StreamingResponse(chunks(), media_type="text/plain")

    app.add_api_route("/test/never", never)
    app.add_api_route("/test/stream", stream)
    return app


def test_a_handler_past_the_limit_is_503_and_counted(settings: Settings) -> None:
    with ApiServer(settings, slow_app(settings)) as server:
        assert_error(httpx.get(f"{server.url}/test/never", timeout=30), 503, "server_timeout")
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
        assert 'route="/test/never",status="503"' in metrics


def test_an_answer_that_has_started_is_never_cut(settings: Settings) -> None:
    with ApiServer(settings, slow_app(settings)) as server:
        response = httpx.get(f"{server.url}/test/stream", timeout=30)
        assert response.status_code == 200 and response.text == "first last"


# -- CORS ---------------------------------------------------------------------------------------


def preflight(url: str, origin: str, method: str = "POST") -> httpx.Response:
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
    }
    return httpx.options(f"{url}/generate", headers=headers, timeout=30)


def test_cors_is_off_by_default(settings: Settings) -> None:
    assert settings.cors_origins == []
    with ApiServer(settings) as server:
        response = preflight(server.url, ALLOWED)
        assert_error(response, 405, "method_not_allowed")
        assert "access-control-allow-origin" not in response.headers
        answer = httpx.get(f"{server.url}/healthz", headers={"Origin": ALLOWED}, timeout=30)
        assert "access-control-allow-origin" not in answer.headers


def test_cors_allows_the_configured_origins_only(settings: Settings) -> None:
    with_keys = settings.model_copy(update={"cors_origins": [ALLOWED], "require_api_keys": True})
    with ApiServer(with_keys) as server:
        # A preflight needs no API key (browsers send none) and names what the API accepts.
        allowed = preflight(server.url, ALLOWED, "DELETE")
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == ALLOWED
        assert "DELETE" in allowed.headers["access-control-allow-methods"]
        assert "access-control-allow-credentials" not in allowed.headers  # bearer keys, no cookies
        error = assert_error(preflight(server.url, "https://evil.example"), 400, "cors_not_allowed")
        assert "origin" in error["message"]
        # Actual answers, errors included, carry the origin and expose the headers clients read.
        refused = httpx.post(
            f"{server.url}/generate", json={"prompt": "a"}, headers={"Origin": ALLOWED}, timeout=30
        )
        assert_error(refused, 401, "missing_api_key")
        assert refused.headers["access-control-allow-origin"] == ALLOWED
        assert "retry-after" in refused.headers["access-control-expose-headers"].lower()
        other = httpx.get(f"{server.url}/healthz", headers={"Origin": "https://evil.example"}, timeout=30)
        assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


def test_cors_origins_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNCLIP_CORS_ORIGINS", "https://a.example, https://b.example")
    assert Settings().cors_origins == ["https://a.example", "https://b.example"]
    monkeypatch.setenv("UNCLIP_CORS_ORIGINS", '["https://c.example"]')
    assert Settings().cors_origins == ["https://c.example"]


# -- multipart parts ----------------------------------------------------------------------------


def small_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(url: str, route: str, files: list[str], fields: list[tuple[str, str]]) -> httpx.Response:
    parts: list[tuple[str, Any]] = [(name, (f"{name}.png", small_png(), "image/png")) for name in files]
    parts += [(name, (None, value, None)) for name, value in fields]
    return httpx.post(f"{url}{route}", files=parts, timeout=30)


@pytest.fixture
def api(settings: Settings) -> Iterator[str]:
    with ApiServer(settings.model_copy(update={"request_timeout_s": 30.0})) as server:
        yield server.url


def test_a_text_diff_with_16_repeated_angles_fits_the_default_part_count(api: str) -> None:
    angles = [("angles", str(k / 32)) for k in range(16)]
    fields = [("base", "a red circle"), ("target", "a red square"), ("size", "64x64"), *angles]
    response = multipart(api, "/text-diffs", ["image"], fields)
    assert response.status_code == 202, response.text
    assert len(response.json()["params"]["angles"]) == 16


def test_more_parts_than_the_limit_are_413(api: str, settings: Settings) -> None:
    limit = settings.max_multipart_parts
    fields = [("size", "64x64")] * limit  # with the image: one part over
    error = assert_error(multipart(api, "/variations", ["image"], fields), 413, "too_many_parts")
    assert str(limit) in error["message"]
    too_many_files = multipart(api, "/interpolations", ["image_a", "image_b", "image_a"], [])
    assert_error(too_many_files, 413, "too_many_parts")


def test_the_part_limit_comes_from_the_setting(settings: Settings) -> None:
    with ApiServer(
        settings.model_copy(update={"max_multipart_parts": 3, "request_timeout_s": 30.0})
    ) as server:
        fields = [("size", "64x64"), ("n", "1")]
        assert multipart(server.url, "/variations", ["image"], fields).status_code == 202
        error = assert_error(
            multipart(server.url, "/variations", ["image"], [*fields, ("seed", "1")]), 413, "too_many_parts"
        )
        assert "at most 3 parts" in error["message"]


# -- keep-alive ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_unclip_api_keeps_idle_connections_longer_than_clients_do(redis_url: str, tmp_path: Path) -> None:
    """uvicorn's default closes a connection idle for 5 s, httpx's pool reuses one idle for up to
    5 s: the server closed connections that clients were reusing (ReadError under load). `unclip
    api` keeps them UNCLIP_HTTP_KEEP_ALIVE_S (75 s): one idle past 5 s still answers."""
    port = free_port()
    env = {
        **os.environ,
        "UNCLIP_REDIS_URL": redis_url,
        "UNCLIP_REQUIRE_API_KEYS": "false",
        "UNCLIP_STORAGE_DIR": str(tmp_path),
        "PYTHONPATH": str(REPO),
    }
    log = (tmp_path / "api.log").open("wb")
    api = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "api", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(url), 60, 0.2, "unclip api to start")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            ask = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"
            sock.sendall(ask)
            assert read_response(sock).startswith(b"HTTP/1.1 200")
            time.sleep(6)  # idle past uvicorn's default keep-alive (5 s)
            sock.sendall(ask)
            assert read_response(sock).startswith(b"HTTP/1.1 200")
    finally:
        api.terminate()
        api.wait(30)
        log.close()


def read_response(sock: socket.socket) -> bytes:
    """One whole response of a kept-alive connection (its body has a Content-Length); b"" when
    the server closed the connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False
