"""What the service adds to a job: submit → dequeue → result recorded, less the model's own time.

    python -m bench.service_overhead [--jobs 40] [--weights DIR | random:tiny] [--out STEM]

Starts a real API (``unclip api``, uvicorn, its own process) and one real worker process on a
queue of their own, on the Redis of ``UNCLIP_REDIS_URL``, and submits small jobs (64², one prior
and two decoder steps) one after another: low load, a job is submitted once the previous one has
ended. Per job, all on this host's clock:

- ``overhead``: ``finished_at`` (the worker has stored the PNGs and recorded the result) minus the
  moment before the client sent its POST, minus the model's time (the pipeline's per-stage
  timings): HTTP, validation, enqueueing, the dequeue, batching, rq's bookkeeping, PNG encoding,
  storage and the final record;
- its parts: ``submit`` (the POST's round trip), ``queue`` (``started_at - created_at``: the
  dequeue and the batch window) and ``worker`` (``finished_at - started_at`` less model time).

Two worker policies run in turn, each on a fresh worker: the default (a job with nothing
compatible queued behind it starts at once) and ``UNCLIP_BATCH_WAIT_ALONE=true`` (every batch
holds the ``UNCLIP_MAX_WAIT_MS`` window open), so the table shows what the policy buys. Writes
``bench/results/service-overhead-<host>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.report import table

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
# A short job: the model's part is excluded from the figure anyway; short keeps the run short.
JOB = {
    "size": "64x64",
    "steps": {"prior": 1, "decoder": 2},
    "guidance": {"decoder": 1.0},
}
FINAL = {"succeeded", "failed", "canceled"}
POLL_S = 0.01


@dataclass(frozen=True)
class Policy:
    name: str
    env: dict[str, str]


POLICIES = (
    Policy("lone job starts at once (default)", {}),
    Policy("every batch waits the window", {"UNCLIP_BATCH_WAIT_ALONE": "true"}),
)


def processor_name() -> str:
    """The CPU's model name (``platform.processor()`` is empty on most Linux systems)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


@contextmanager
def service(env: dict[str, str], log_dir: Path) -> Iterator[str]:
    """One worker and one API process on ``env``; yields the API's URL once the worker listens."""
    port = _free_port()
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    logs = [(log_dir / f"{name}.log").open("wb") for name in ("worker", "api")]
    worker_name = f"bench-{uuid.uuid4().hex[:6]}"
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "workers.main", "--name", worker_name],
            cwd=REPO,
            env=full_env,
            stdout=logs[0],
            stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "cli.main", "api", "--port", str(port)],
            cwd=REPO,
            env=full_env,
            stdout=logs[1],
            stderr=subprocess.STDOUT,
        ),
    ]
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            for process, log in zip(processes, logs, strict=True):
                if process.poll() is not None:
                    raise RuntimeError(f"a service process exited early; see {log.name}")
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        _wait_until(ready, 180, "the API to answer /readyz with a worker listening")
        yield url
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs:
            log.close()


def one_job(client: httpx.Client, i: int) -> dict[str, float]:
    """Submit one job, wait for its end, return its timeline in milliseconds."""
    sent = time.time()
    response = client.post("/generate", json={"prompt": f"a red circle, job {i}", "seed": i, **JOB})
    answered = time.time()
    if response.status_code != 202:
        raise RuntimeError(f"submit answered {response.status_code}: {response.text}")
    job_id = response.json()["id"]
    while True:
        record = client.get(f"/jobs/{job_id}").json()
        if record["status"] in FINAL:
            break
        time.sleep(POLL_S)
    if record["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} ended {record['status']}: {record.get('error')}")
    model_s = sum(record["timings"].values())
    return {
        "overhead": 1000 * (record["finished_at"] - sent - model_s),
        "submit": 1000 * (answered - sent),
        "queue": 1000 * (record["started_at"] - record["created_at"]),
        "worker": 1000 * (record["finished_at"] - record["started_at"] - model_s),
        "model": 1000 * model_s,
    }


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        part: {
            "p50": statistics.median(s[part] for s in samples),
            "p90": percentile([s[part] for s in samples], 0.9),
            "mean": statistics.fmean(s[part] for s in samples),
        }
        for part in samples[0]
    }


def measure(
    policy: Policy, base_env: dict[str, str], jobs: int, warmup: int, log_dir: Path
) -> dict[str, Any]:
    env = {**base_env, **policy.env}
    with service(env, log_dir) as url, httpx.Client(base_url=url, timeout=60) as client:
        for i in range(warmup):  # the first jobs pay for lazy imports, caches and connections
            one_job(client, 10_000 + i)
        samples = []
        for i in range(jobs):
            samples.append(one_job(client, i))
            print(f"  {policy.name}: job {i + 1}/{jobs}", file=sys.stderr, end="\r", flush=True)
        print(file=sys.stderr)
    return {"policy": policy.name, "env": policy.env, "jobs": jobs, "ms": summarize(samples)}


def markdown(results: dict[str, Any]) -> str:
    parts = ["overhead", "submit", "queue", "worker", "model"]
    rows = [
        [row["policy"], *(f"{row['ms'][p]['p50']:.1f} / {row['ms'][p]['p90']:.1f}" for p in parts)]
        for row in results["rows"]
    ]
    header = ["worker policy", *(f"{p} ms p50 / p90" for p in parts)]
    machine = results["machine"]
    return "\n".join(
        [
            f"Service overhead, {results['when']}: {machine['processor']}, {machine['cores']} cores, "
            f"Python {machine['python']}; 1-min load {machine['load_start']:.2f} at start, "
            f"{machine['load_end']:.2f} at end. {results['jobs']} sequential 64² jobs per policy "
            f"(one client, one worker, one API process), `UNCLIP_MAX_WAIT_MS={results['max_wait_ms']}`, "
            f"weights {results['weights']}.",
            "",
            table(header, rows),
            "",
            "overhead = result recorded − POST sent − model time; queue = started − created (dequeue "
            "and batch window); worker = finished − started − model time (rq bookkeeping, PNG, "
            "storage, final record).",
        ]
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.service_overhead", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--jobs", type=int, default=40, help="measured jobs per policy")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured jobs first, per policy")
    parser.add_argument("--weights", default=None, help="a model directory or random:tiny (default: bundled)")
    parser.add_argument("--max-wait-ms", type=int, default=None, help="default: the service's")
    parser.add_argument("--out", type=Path, default=None, help="output stem (default: bench/results/...)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from contract.settings import Settings

    args = parse_args(argv)
    max_wait_ms = args.max_wait_ms if args.max_wait_ms is not None else Settings().max_wait_ms
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="unclip-overhead-") as tmp:
        base_env = {
            "UNCLIP_QUEUE": f"bench-overhead-{uuid.uuid4().hex[:8]}",
            "UNCLIP_STORAGE_DIR": str(Path(tmp) / "images"),
            "UNCLIP_DEVICE": "cpu",
            "UNCLIP_REQUIRE_API_KEYS": "false",
            "UNCLIP_WORKER_METRICS_PORT": "0",
            "UNCLIP_MAX_WAIT_MS": str(max_wait_ms),
            "UNCLIP_LOG_LEVEL": "WARNING",
        }
        if args.weights:
            base_env["UNCLIP_WEIGHTS"] = args.weights
        rows = [measure(policy, base_env, args.jobs, args.warmup, Path(tmp)) for policy in POLICIES]
    results = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {
            "processor": processor_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_start": load_start,
            "load_end": os.getloadavg()[0],
        },
        "jobs": args.jobs,
        "max_wait_ms": max_wait_ms,
        "weights": args.weights or "bundled",
        "rows": rows,
    }
    stem = args.out or RESULTS / f"service-overhead-{platform.node() or 'machine'}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1))
    report = markdown(results)
    stem.with_suffix(".md").write_text(report + "\n")
    print(report)
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
