"""Real processes for the integration tests: worker subprocesses and a uvicorn API server.

Workers run ``python -m workers.main`` on the tiny model with random weights; tests pass 64x64
sizes and one or two steps per stage so a job takes a fraction of a second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from redis import Redis

from contract.settings import Settings
from service.main import create_app
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
NO_GUIDANCE = {"decoder": 1.0}  # no classifier-free guidance: half the decoder's work


def steps(decoder: int) -> dict[str, Any]:
    """Request fields for a 64x64 job whose length is set by its decoder steps (tens of
    milliseconds each on random tiny weights and a CPU)."""
    return {"steps": {"prior": 1, "decoder": decoder}, "guidance": NO_GUIDANCE}


FAST = steps(2)


def wait_for(
    predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a subprocess build ``settings``."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, list | tuple):  # pydantic-settings reads complex values as JSON
            value = json.dumps(list(value))
        env[f"UNCLIP_{name.upper()}"] = str(value)
    return env


class WorkerProcess:
    """``python -m workers.main`` with its own name and metrics port."""

    def __init__(self, settings: Settings, name: str, log_dir: Path):
        self.settings = settings
        self.name = name
        self.metrics_port = free_port()
        self.log_path = log_dir / f"{name}.log"
        env = {**os.environ, **settings_env(settings), "UNCLIP_WORKER_METRICS_PORT": str(self.metrics_port)}
        # One intra-op thread per worker: several workers share two cores in the tests, and
        # oversubscribed torch threads slow a CPU step down tenfold.
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "workers.main", "--name", name],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, redis: Redis, timeout: float = 60.0) -> WorkerProcess:
        """Until the model is loaded and the worker listens on the queue."""

        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited early:\n{self.log()}")
            workers = redis.smembers(f"rq:workers:{self.settings.queue}")
            return f"rq:worker:{self.name}".encode() in workers

        wait_for(ready, timeout, what=f"worker {self.name} to start")
        return self

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def metric(self, name: str) -> float:
        """The value of an unlabelled sample (e.g. ``unclip_batch_size_count``), 0 when absent."""
        for line in self.metrics().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def signal(self, sig: signal.Signals) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        return code


class ApiServer:
    """The real app under uvicorn on a free port, in a thread of the test process (``app``: one
    built by the test, e.g. with a route added)."""

    def __init__(self, settings: Settings, app: Any = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = app if app is not None else create_app(settings)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ApiServer:
        self.thread.start()
        wait_for(lambda: self.server.started, 10, what="uvicorn to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@contextmanager
def workers(
    settings: Settings, names: list[str], log_dir: Path, redis: Redis
) -> Iterator[list[WorkerProcess]]:
    """Start the workers together (model loads overlap), wait until all listen, stop them after."""
    started = [WorkerProcess(settings, name, log_dir) for name in names]
    try:
        for worker in started:
            worker.wait_ready(redis)
        yield started
    finally:
        for worker in started:
            worker.stop()
