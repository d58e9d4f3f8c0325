"""service.cli (and the root command): the subcommands, the Redis-missing error, and ``serve`` running for real."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from cli.main import build_parser, chosen_command
from tests.conftest import TEST_REDIS_URL, free_port
from tests.workers.harness import REPO, steps, wait_for


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser(chosen_command(argv)).parse_args(argv)


def test_root_command_parses_api_worker_and_serve() -> None:
    api = parse(["api", "--host", "0.0.0.0", "--port", "9000", "--workers", "2"])
    assert (api.host, api.port, api.workers) == ("0.0.0.0", 9000, 2) and callable(api.func)
    worker = parse(["worker", "--burst"])
    assert worker.burst is True and callable(worker.func)
    serve = parse(["serve"])
    assert (serve.host, serve.port) == ("127.0.0.1", 8000) and callable(serve.func)


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_serve_without_redis_says_how_to_start_one() -> None:
    process = run_cli(["serve"], {"UNCLIP_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "redis-server --daemonize yes --port 6379" in output and "UNCLIP_REDIS_URL" in output


@pytest.mark.slow  # serve starts an API and a worker process
def test_serve_runs_api_and_worker(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "UNCLIP_REDIS_URL": TEST_REDIS_URL,
        "UNCLIP_QUEUE": f"serve-{uuid.uuid4().hex[:8]}",
        "UNCLIP_WEIGHTS": "random:tiny",  # the bundled model may not be trained yet
        "UNCLIP_DEVICE": "cpu",
        "UNCLIP_STORAGE_DIR": str(tmp_path),
        "UNCLIP_WORKER_METRICS_PORT": str(free_port()),
        "OMP_NUM_THREADS": "1",
    }
    process = run_cli(["serve", "--port", str(port)], env)
    url = f"http://127.0.0.1:{port}"
    try:
        assert process.stdout is not None
        banner = process.stdout.readline() + process.stdout.readline() + process.stdout.readline()
        assert url in banner and "curl" in banner

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 90, 0.2, "serve to become ready")
        body = {"prompt": "served", "size": "64x64", **steps(1)}
        job = httpx.post(f"{url}/generate", json=body, timeout=10).json()
        final = wait_for(
            lambda: (
                (j := httpx.get(f"{url}/jobs/{job['id']}", timeout=5).json())["status"] == "succeeded" and j
            ),
            60,
            0.1,
            "the job",
        )
        assert len(final["images"]) == 1
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=90)
    assert process.returncode == 0


@pytest.mark.slow  # two uvicorn processes
def test_api_with_several_processes_serves_merged_metrics(tmp_path: Path) -> None:
    port = free_port()
    env = {"UNCLIP_REDIS_URL": TEST_REDIS_URL, "UNCLIP_QUEUE": f"mp-{uuid.uuid4().hex[:8]}"}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    process = run_cli(["api", "--port", str(port), "--workers", "2"], env)
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, 0.2, "the API")
        for _ in range(20):  # new connections: both processes answer some of them
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        text = httpx.get(f"{url}/metrics", timeout=5).text
        line = next(
            x for x in text.splitlines() if x.startswith("unclip_http_requests_total") and "/healthz" in x
        )
        assert float(line.split()[-1]) >= 21  # every process's counts, merged from the files
        assert len(list(tmp_path.glob("counter_*.db"))) >= 2
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
