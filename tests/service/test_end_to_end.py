"""End to end over real HTTP: uvicorn serving the app, a real worker process on the tiny model
with random weights, a real Redis. One worker serves the whole module (it loads the model once)."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import queue
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread
from typing import Any

import httpx
import pytest
from PIL import Image
from redis import Redis
from rq.job import Job
from rq.registry import CanceledJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from contract.settings import Settings
from tests.conftest import free_port
from tests.service.conftest import service_settings
from tests.workers.harness import FAST, WorkerProcess, steps, wait_for

pytestmark = pytest.mark.slow  # a worker process and uvicorn for the module

SECRET = "test-webhook-secret-" + "x" * 16


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return service_settings(
        tmp_path_factory,
        "e2e",
        max_wait_ms=200,
        webhook_secret=SECRET,
        webhook_backoff_s=0.2,
        webhook_allow_private=True,  # the test receiver listens on 127.0.0.1
        require_api_keys=False,  # keys: tests/service/test_auth.py and test_faults.py
    )


def submit(api: str, **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{api}/generate", json={"size": "64x64", **FAST, **body}, timeout=10)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def read(api: str, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = httpx.get(f"{api}/jobs/{job_id}", timeout=10).json()
    return job


def wait_final(api: str, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        job = read(api, job_id)
        return job if job["status"] in ("succeeded", "failed", "canceled") else None

    job: dict[str, Any] = wait_for(final, timeout, 0.1, f"job {job_id} to finish")
    return job


def fetch(redis: Redis, job_id: str) -> Job:
    return Job.fetch(job_id, connection=redis, serializer=JSONSerializer)


def test_submit_poll_download(api: str, settings: Settings, redis: Redis) -> None:
    job = wait_final(api, submit(api, prompt="a red square on a blue table", n=2)["id"])
    assert job["status"] == "succeeded", job
    assert [image["index"] for image in job["images"]] == [0, 1]
    assert {"clip", "prior", "decoder"} <= set(job["timings"])
    assert job["sampling"]["decoder"]["steps"] == 2 and job["sampling"]["prior"]["steps"] == 1
    assert job["expires_at"] > time.time() and job["finished_at"] >= job["started_at"]
    for image in job["images"]:
        response = httpx.get(image["url"], timeout=10)
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        png = Image.open(io.BytesIO(response.content))
        assert png.format == "PNG" and png.size == (64, 64) and png.mode == "RGB"
    # rq's own bookkeeping agrees: finished, in the FinishedJobRegistry, no longer started.
    rq_job = fetch(redis, job["id"])
    assert rq_job.get_status().value == "finished" and rq_job.latest_result() is not None
    assert job["id"] in FinishedJobRegistry(settings.queue, connection=redis)
    assert job["id"] not in StartedJobRegistry(settings.queue, connection=redis)
    # A finished job cannot be canceled.
    response = httpx.post(f"{api}/jobs/{job['id']}/cancel", timeout=10)
    assert response.status_code == 409 and response.json()["error"]["code"] == "job_already_final"
    assert httpx.get(f"{api}/readyz", timeout=10).json()["workers"] == 1


def test_a_seed_gives_the_same_image_in_any_batch(api: str) -> None:
    alone = wait_final(api, submit(api, prompt="a seeded teapot", seed=42)["id"])
    with ThreadPoolExecutor(4) as pool:  # the same request again, now batched with others
        ids = list(
            pool.map(lambda p: submit(api, prompt=p, seed=42)["id"], ["a seeded teapot", "x", "y", "z"])
        )
    batched = wait_final(api, ids[0])
    first, second = (httpx.get(j["images"][0]["url"], timeout=10).content for j in (alone, batched))
    assert first == second


def test_repeated_prompt_hits_the_text_cache(api: str, worker: WorkerProcess) -> None:
    prompt = f"a unique prompt {uuid.uuid4().hex}"
    wait_final(api, submit(api, prompt=prompt)["id"])
    hits, misses = (
        worker.metric("unclip_text_cache_hits_total"),
        worker.metric("unclip_text_cache_misses_total"),
    )
    # Same prompt after normalization (case and whitespace are what CLIP's tokenizer ignores).
    wait_final(api, submit(api, prompt="  " + prompt.upper().replace(" ", "   "))["id"])
    assert worker.metric("unclip_text_cache_hits_total") == hits + 1
    assert worker.metric("unclip_text_cache_misses_total") == misses


def test_jobs_queued_behind_a_busy_worker_share_batches(api: str, worker: WorkerProcess) -> None:
    count_before = worker.metric("unclip_batch_size_count")
    sum_before = worker.metric("unclip_batch_size_sum")
    blocker = submit(api, prompt="keep the worker busy", **steps(60))
    wait_for(lambda: read(api, blocker["id"])["status"] == "running", 30, what="the blocker to start")
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: submit(api, prompt=f"queued job {i}")["id"], range(8)))
    assert read(api, blocker["id"])["status"] == "running"  # all 8 were queued behind it
    jobs = [wait_final(api, job_id) for job_id in ids]
    assert all(job["status"] == "succeeded" for job in jobs)
    wait_final(api, blocker["id"])
    # Through the batch-size histogram: the blocker's batch plus at most two for the eight.
    batches = worker.metric("unclip_batch_size_count") - count_before
    assert 2 <= batches <= 3
    assert worker.metric("unclip_batch_size_sum") - sum_before == 9
    assert sum(job["batch_size"] for job in jobs) >= 8 * 4  # on average at least 4 per batch


def test_cancel_a_running_batch_member(api: str, settings: Settings, redis: Redis) -> None:
    # Queue both behind a blocker (other settings, so its own batch) so that the worker takes
    # them together however slow the machine is.
    blocker = submit(api, prompt="keep the worker busy", **steps(60))
    wait_for(lambda: read(api, blocker["id"])["status"] == "running", 30, what="the blocker to start")
    victim = submit(api, prompt="cancel me", **steps(36))
    survivor = submit(api, prompt="let me finish", **steps(36))
    assert read(api, blocker["id"])["status"] == "running"  # both were queued behind it
    wait_for(
        lambda: (read(api, victim["id"]).get("progress") or {}).get("fraction", 0) > 0.05,
        60,
        what="the batch to make progress",
    )
    response = httpx.delete(f"{api}/jobs/{victim['id']}", timeout=10)
    assert response.status_code == 202 and response.json()["cancel_requested"] is True
    canceled = wait_final(api, victim["id"])
    finished = wait_final(api, survivor["id"])
    assert canceled["status"] == "canceled" and canceled["images"] == []
    assert finished["status"] == "succeeded" and len(finished["images"]) == 1
    assert finished["batch_size"] == 2  # they were sampled together
    assert victim["id"] in CanceledJobRegistry(settings.queue, connection=redis)
    assert victim["id"] not in StartedJobRegistry(settings.queue, connection=redis)


def test_cancel_a_queued_job_behind_a_running_one(api: str) -> None:
    running = submit(api, prompt="occupy", **steps(20))
    wait_for(lambda: read(api, running["id"])["status"] == "running", 30, what="the job to start")
    queued = submit(api, prompt="never run", size="256x256")  # incompatible: cannot join the batch
    assert read(api, queued["id"])["queue_position"] == 1
    response = httpx.post(f"{api}/jobs/{queued['id']}/cancel", timeout=10)
    assert response.status_code == 200 and response.json()["status"] == "canceled"
    assert wait_final(api, running["id"])["status"] == "succeeded"
    assert read(api, queued["id"])["status"] == "canceled"


class _Receiver(BaseHTTPRequestHandler):
    deliveries: queue.Queue[tuple[dict[str, str], bytes]] = queue.Queue()
    failures_left = 1  # the first delivery is refused with a 503, so a retry is needed

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if _Receiver.failures_left > 0:
            _Receiver.failures_left -= 1
            self.send_response(503)
        else:
            _Receiver.deliveries.put((dict(self.headers.items()), body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhook_is_delivered_signed_and_retried(api: str) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Receiver)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        job = submit(api, prompt="a webhook test", webhook=url)
        headers, body = _Receiver.deliveries.get(timeout=60)
    finally:
        server.shutdown()
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Unclip-Signature"], expected)
    payload = json.loads(body)
    assert payload["event"] == "job.succeeded" and payload["job"]["id"] == job["id"]
    assert payload["job"]["status"] == "succeeded" and len(payload["job"]["images"]) == 1
    assert str(payload["timestamp"]) == headers["X-Unclip-Timestamp"]
    assert abs(payload["timestamp"] - time.time()) < 120


def test_worker_metrics(worker: WorkerProcess) -> None:
    text = worker.metrics()
    assert "unclip_worker_up 1.0" in text
    for name in (
        "unclip_queue_wait_seconds_bucket",
        "unclip_job_latency_seconds_bucket",
        'unclip_stage_latency_seconds_bucket{le="600.0",stage="decoder"}',
        "unclip_images_generated_total",
        'unclip_jobs_total{status="succeeded"}',
        'unclip_jobs_total{status="canceled"}',
    ):
        assert name in text, name


def test_expired_results_answer_result_expired(api: str, redis: Redis) -> None:
    job = wait_final(api, submit(api, prompt="short-lived")["id"])
    url = job["images"][0]["url"]
    assert httpx.get(url, timeout=10).status_code == 200
    record = fetch(redis, job["id"])
    record.meta["expires_at"] = time.time() - 1  # as if result_ttl_s had passed
    record.save_meta()
    response = httpx.get(url, timeout=10)
    assert response.status_code == 404 and response.json()["error"]["code"] == "result_expired"
    expired = read(api, job["id"])
    assert (
        expired["status"] == "succeeded" and expired["images"] == [] and expired["expires_at"] < time.time()
    )


def test_a_failing_webhook_never_fails_the_job(api: str) -> None:
    job = submit(api, prompt="nobody listens", webhook=f"http://127.0.0.1:{free_port()}/hook")
    assert wait_final(api, job["id"])["status"] == "succeeded"
