"""``unclip worker`` / ``python -m workers.main``: settings in, one batching worker running.

Start-up order: load the model (the worker registers with rq only once it can sample), start
the metrics server and the background threads (lease, reaper, webhook sender), reap whatever a
previous crash left, then work until SIGTERM (warm: the current batch finishes).
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Sequence
from functools import partial

from prometheus_client import CollectorRegistry, start_http_server
from redis import Redis

from contract.connection import REDIS_HINT, check_redis
from contract.jobs import JobStore
from contract.metrics import WorkerMetrics
from contract.settings import Settings, get_settings
from contract.storage import LocalImageStorage
from workers.leases import Lease, PeriodicThread, Reaper
from workers.runtime import Runtime, RuntimeState
from workers.text_cache import TextEncodingCache
from workers.webhooks import WebhookSender
from workers.worker import BatchingWorker

log = logging.getLogger("unclip.worker")
_STORAGE_CLEANUP_S = 60.0


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_runtime(settings: Settings, connection: Redis, metrics: WorkerMetrics) -> Runtime:
    from models.pipeline import load_pipeline

    loader = partial(load_pipeline, settings.weights, resolve_device(settings.device), settings.dtype)
    cache = partial(
        TextEncodingCache,
        connection,
        ttl_s=settings.text_cache_ttl_s,
        lru_size=settings.text_cache_size,
        metrics=metrics,
    )
    return Runtime(loader, cache, metrics)


def run(burst: bool = False, name: str | None = None) -> int:
    """Run one worker until stopped: 0 on a clean stop, 1 when the model could not serve,
    2 when Redis does not answer."""
    settings = get_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    problem = check_redis(settings.redis_url)
    if problem is not None:
        log.error("no Redis answers at %s (%s); %s", settings.redis_url, problem, REDIS_HINT)
        return 2
    connection = Redis.from_url(settings.redis_url, health_check_interval=30)
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, registry=registry)
        log.info("worker metrics on :%d/metrics", settings.worker_metrics_port)
    runtime = build_runtime(settings, connection, metrics)
    try:
        runtime.start()
    except Exception as exc:
        log.error("cannot load the model (UNCLIP_WEIGHTS=%s): %s", settings.weights or "<bundled>", exc)
        return 1
    storage = LocalImageStorage(settings.storage_dir)
    worker = BatchingWorker(
        [JobStore(connection, settings).queue],
        runtime=runtime,
        settings=settings,
        storage=storage,
        metrics=metrics,
        connection=connection,
        name=name,
    )
    stop = threading.Event()
    lease = Lease(connection, worker.store.keys, worker.name, settings.lease_ttl_s)
    reaper = Reaper(worker.store, worker_name=worker.name)
    lease.renew()
    threads = _start_threads(settings, connection, worker, lease, reaper, storage, stop)
    reaper.run_once()
    try:
        worker.work(burst=burst, logging_level=settings.log_level)
    finally:
        stop.set()
        for thread in threads:
            if isinstance(thread, WebhookSender):
                thread.close()
        # Whatever this worker still owns (a cold stop mid-batch) goes back to the queue now.
        Reaper(worker.store).reap(worker.name)
        lease.release()
        metrics.worker_up.set(0)
    return 1 if runtime.state is RuntimeState.DEFUNCT and not burst else 0


def _start_threads(
    settings: Settings,
    connection: Redis,
    worker: BatchingWorker,
    lease: Lease,
    reaper: Reaper,
    storage: LocalImageStorage,
    stop: threading.Event,
) -> list[threading.Thread]:
    def keep_alive() -> None:
        lease.renew()
        worker.heartbeat_running()

    threads: list[threading.Thread] = [
        PeriodicThread("lease", settings.lease_ttl_s / 3, keep_alive, stop),
        PeriodicThread("reaper", settings.lease_ttl_s / 2, reaper.run_once, stop),
        PeriodicThread("storage-cleanup", _STORAGE_CLEANUP_S, storage.cleanup, stop),
    ]
    if settings.webhook_secret is not None:
        threads.append(
            WebhookSender(
                connection,
                worker.store.keys,
                worker.name,
                secret=settings.webhook_secret.get_secret_value(),
                timeout_s=settings.webhook_timeout_s,
                max_attempts=settings.webhook_max_attempts,
                backoff_s=settings.webhook_backoff_s,
                allow_private=settings.webhook_allow_private,
                stop=stop,
            )
        )
    for thread in threads:
        thread.start()
    return threads


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.main", description="run one unCLIP worker")
    parser.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    return run(burst=args.burst, name=args.name)


if __name__ == "__main__":
    sys.exit(main())
