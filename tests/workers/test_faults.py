"""Faults, each against a real Redis and real worker processes (issue 16): the only worker
killed, Redis restarted under load, SIGTERM past the grace period, SIGTERM to the API, several
workers on one host with default settings. Recovery times are printed, not asserted."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from rq.registry import StartedJobRegistry

from contract.jobs import JobStore
from contract.schemas import GenerateRequest
from contract.settings import Settings
from tests.conftest import free_port
from tests.workers.harness import REPO, ApiServer, WorkerProcess, settings_env, steps, wait_for

pytestmark = pytest.mark.slow
FINAL = {"succeeded", "failed", "canceled"}


@pytest.fixture
def settings(redis_url: str, queue_name: str, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        queue=queue_name,
        storage_dir=tmp_path / "images",
        weights="random:tiny",
        device="cpu",
        max_batch=8,
        max_wait_ms=200,
        lease_ttl_s=3,
        reaper_interval_s=0.5,
        require_api_keys=False,
        worker_slots_dir=tmp_path / "slots",
    )


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    client.close()


def submit(api: str, count: int, fields: dict[str, Any]) -> list[str]:
    ids = []
    for i in range(count):
        body = {"prompt": f"fault {i}", "size": "64x64", "seed": i, **fields}
        response = httpx.post(f"{api}/generate", json=body, timeout=10)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def status(api: str, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = httpx.get(f"{api}/jobs/{job_id}", timeout=10).json()
    return job


def all_final(api: str, ids: list[str]) -> list[dict[str, Any]] | None:
    jobs = [status(api, i) for i in ids]
    return jobs if all(j["status"] in FINAL for j in jobs) else None


def test_the_only_worker_killed_its_jobs_wait_for_the_next(
    settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    with ApiServer(settings) as api:
        # Queued before the worker starts, so that it takes both as one batch: a lone job does not
        # wait for company, and the second POST could come just after the first one started.
        ids = submit(api.url, 2, steps(60))
        worker = WorkerProcess(settings, f"{settings.queue}-only", tmp_path).wait_ready(redis)
        wait_for(lambda: all(status(api.url, i)["status"] == "running" for i in ids), 60, what="the batch")
        assert httpx.get(f"{api.url}/readyz", timeout=10).status_code == 200
        worker.signal(signal.SIGKILL)
        killed = time.monotonic()
        worker.process.wait(10)
        # No worker is alive: the API's reaper puts the jobs back in the queue.
        wait_for(lambda: all(status(api.url, i)["status"] == "queued" for i in ids), 60, 0.1, "the requeue")
        requeued_s = time.monotonic() - killed
        for job_id in ids:
            job = status(api.url, job_id)
            assert job["status"] == "queued" and job["attempts"] == 1 and job["progress"] is None
        ready = httpx.get(f"{api.url}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "no_workers"
        assert len(StartedJobRegistry(settings.queue, connection=redis)) == 0
        replacement = WorkerProcess(settings, f"{settings.queue}-next", tmp_path).wait_ready(redis)
        try:
            done = wait_for(lambda: all_final(api.url, ids), 120, 0.2, "the jobs to finish")
            assert [j["status"] for j in done] == ["succeeded"] * len(ids)
        finally:
            replacement.stop()
        print(f"\nonly worker kill -9'd: its {len(ids)} jobs were queued again {requeued_s:.1f}s later")


class PrivateRedis:
    """A redis-server of this test's own (AOF on, as docker-compose.yml runs it), on a free port."""

    def __init__(self, directory: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)),
                *("--appendonly", "yes", "--appendfsync", "everysec", "--save", ""),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, 20, 0.05, "redis-server to start")

    def _answers(self) -> bool:
        try:
            return bool(Redis.from_url(self.url, socket_timeout=1).ping())
        except Exception:
            return False

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_workers_and_api_ride_out_a_redis_restart(settings: Settings, tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path)
    server.start()
    settings = settings.model_copy(update={"redis_url": server.url})
    redis = Redis.from_url(server.url)
    names = [f"{settings.queue}-r1", f"{settings.queue}-r2"]
    workers = [WorkerProcess(settings, name, tmp_path) for name in names]
    try:
        for worker in workers:
            worker.wait_ready(redis)
        with ApiServer(settings) as api:
            ids = submit(api.url, 12, steps(12))
            wait_for(lambda: any(status(api.url, i)["status"] == "running" for i in ids), 60, what="a batch")
            server.kill()
            down = time.monotonic()
            # While Redis is away the API answers 503 in the error shape, at once.
            response = httpx.post(f"{api.url}/generate", json={"prompt": "during"}, timeout=30)
            answered_s = time.monotonic() - down
            assert response.status_code == 503 and response.json()["error"]["code"] == "redis_unavailable"
            assert int(response.headers["retry-after"]) > 0
            time.sleep(8)  # Redis stays away longer than a lease (3 s)
            server.start()
            back = time.monotonic()
            jobs = wait_for(lambda: all_final(api.url, ids), 180, 0.25, "every job to end")
            recovered_s = time.monotonic() - back
        assert [j["status"] for j in jobs] == ["succeeded"] * len(ids)
        assert all(w.process.poll() is None for w in workers), [w.log() for w in workers]
        # Each job's end was recorded once: the workers' final-state counters add up to the jobs.
        counted = sum(w.metric('unclip_jobs_total{status="succeeded"}') for w in workers)
        assert counted == len(ids), [w.log() for w in workers]
        assert len(StartedJobRegistry(settings.queue, connection=redis)) == 0
        print(
            f"\nRedis kill -9'd for 8 s under {len(ids)} jobs: API answered 503 in {answered_s:.2f}s; "
            f"both workers stayed up; every job succeeded once, {recovered_s:.1f}s after Redis came back"
        )
    finally:
        for worker in workers:
            worker.stop()
        server.kill()


def test_sigterm_past_the_grace_period_requeues_and_exits(
    settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"shutdown_grace_s": 1.0})
    store = JobStore(redis, settings)
    worker = WorkerProcess(settings, f"{settings.queue}-grace", tmp_path).wait_ready(redis)
    request = GenerateRequest.model_validate({"prompt": "long", "size": "64x64", "seed": 1, **steps(250)})
    job_id = store.submit_request(request).job.id
    wait_for(lambda: (store.fetch(job_id).meta.get("progress") or {}).get("fraction", 0) > 0.02, 60)  # type: ignore[union-attr]
    worker.signal(signal.SIGTERM)
    stopped = time.monotonic()
    assert worker.process.wait(120) == 0, worker.log()
    exit_s = time.monotonic() - stopped
    job = store.fetch(job_id)
    assert job is not None and job.get_status().value == "queued", worker.log()
    assert job.meta["attempts"] == 0  # a shutdown is not a lost worker
    assert store.queue.get_job_ids() == [job_id]
    assert len(StartedJobRegistry(settings.queue, connection=redis)) == 0
    assert store.live_workers() == 0
    print(
        f"\nSIGTERM with a 1 s grace during a 250-step job: worker exited {exit_s:.1f}s later, job requeued"
    )


def test_sigterm_to_the_api_completes_the_request_in_flight(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(REPO)}
    api = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "api", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _answers(port), 60, 0.1, "the API to start")
        body = b'{"prompt": "in flight", "size": "64x64"}'
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            head = (
                f"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            conn.sendall(head + body[:10])
            time.sleep(1.0)  # the server has the request's head: it is in flight
            api.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            conn.sendall(body[10:])
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 202"), answer[:300]
        # uvicorn re-raises the SIGTERM once its graceful shutdown is done.
        assert api.wait(30) in (0, -signal.SIGTERM)
    finally:
        if api.poll() is None:
            api.kill()


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_two_workers_on_one_host_with_default_settings(
    settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    """Default metrics ports (the second worker takes the next free one) and thread share (cores /
    live workers)."""
    base = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(settings_env(settings), UNCLIP_WORKER_METRICS_PORT=str(base), PYTHONPATH=str(REPO))
    names = [f"{settings.queue}-h{i}" for i in range(2)]
    logs = [(tmp_path / f"{name}.log").open("wb") for name in names]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "workers.main", "--name", name], cwd=REPO, env=env, stdout=log, stderr=log
        )
        for name, log in zip(names, logs, strict=True)
    ]
    try:
        wait_for(
            lambda: (
                {f"rq:worker:{n}".encode() for n in names} <= redis.smembers(f"rq:workers:{settings.queue}")
            ),
            120,
            what="both workers",
        )
        assert all(p.poll() is None for p in procs)
        store = JobStore(redis, settings)
        # Two jobs with different settings: each idle worker takes one, and re-shares its threads.
        for decoder in (20, 21):
            request = GenerateRequest.model_validate({"prompt": "p", "size": "64x64", **steps(decoder)})
            store.submit_request(request)

        # Each worker logs the port it took: one has the configured port, the other the next
        # free one above it (not always base + 1: base comes from the ephemeral range, where a
        # client connection may hold the port just above).
        def metrics_ports() -> list[int] | None:
            logs = [(tmp_path / f"{name}.log").read_text() for name in names]
            found = [re.search(r"metrics on :(\d+)/metrics", log) for log in logs]
            return [int(match.group(1)) for match in found if match] if all(found) else None

        ports: list[int] = wait_for(metrics_ports, 60, what="both workers' metrics ports")
        assert min(ports) == base and max(ports) > base, ports
        expected = max(1, len(os.sched_getaffinity(0)) // 2)

        def threads(port: int) -> float:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            line = next(x for x in text.splitlines() if x.startswith("unclip_worker_threads "))
            return float(line.split()[1])

        wait_for(
            lambda: all(threads(p) == expected for p in ports), 120, 0.5, "both workers to share the cores"
        )
        print(
            f"\ntwo workers, default settings: metrics on :{ports[0]} and :{ports[1]}, {expected} thread(s) each"
        )
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()
