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
from collections.abc import Callable, Sequence
from functools import partial

from prometheus_client import CollectorRegistry, start_http_server
from redis import Redis
from redis.exceptions import RedisError

from contract.connection import REDIS_HINT, check_redis
from contract.jobs import JobStore
from contract.metrics import WorkerMetrics
from contract.settings import Settings, get_settings
from contract.storage import LocalImageStorage
from models.host_memory import keep_freed_memory
from workers.host_slots import HostSlot, thread_share
from workers.leases import Lease, PeriodicThread, Reaper
from workers.outages import work_through_outages
from workers.runtime import (
    Runtime,
    RuntimeState,
    configure_compile_cache,
    configure_openmp,
    pipeline_loader,
)
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
    loader = pipeline_loader(settings, resolve_device(settings.device))
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
    configure_openmp(settings.omp_wait_policy)  # before anything loads torch
    configure_compile_cache(settings.compile_cache_dir)
    if settings.keep_freed_memory:
        keep_freed_memory()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    problem = check_redis(settings.redis_url)
    if problem is not None:
        log.error("no Redis answers at %s (%s); %s", settings.redis_url, problem, REDIS_HINT)
        return 2
    connection = Redis.from_url(settings.redis_url, health_check_interval=30)
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    slot = HostSlot(settings.worker_slots_dir)
    slot.claim()
    if settings.worker_metrics_port:
        port = serve_metrics(settings.worker_metrics_port, registry)
        log.info("worker slot %d on this host; metrics on :%d/metrics", slot.index, port)
    share = partial(share_threads, settings, slot, metrics)
    share()
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
        before_batch=share,
    )
    stop = threading.Event()
    lease = Lease(connection, worker.store.keys, worker.name, settings.lease_ttl_s)
    reaper = Reaper(worker.store, worker_name=worker.name)
    lease.renew()
    threads = _start_threads(settings, connection, worker, lease, reaper, storage, stop)
    reaper.run_once()
    try:
        work_through_outages(worker, burst, settings.log_level)
    finally:
        stop.set()
        for thread in threads:
            if isinstance(thread, WebhookSender):
                thread.close()
        # Whatever this worker still owns (a cold stop mid-batch, a batch past the shutdown
        # grace) goes back to the queue now; no attempt is counted: no worker was lost.
        _quietly(lambda: Reaper(worker.store).reap(worker.name, count_attempt=False))
        _quietly(lease.release)
        slot.release()
        metrics.worker_up.set(0)
    return 1 if runtime.state is RuntimeState.DEFUNCT and not burst else 0


def serve_metrics(port: int, registry: CollectorRegistry, tries: int = 100) -> int:
    """Serve ``registry`` on ``port``, or on the next free port above it (logged)."""
    for candidate in range(port, min(port + tries, 65536)):
        try:
            start_http_server(candidate, registry=registry)
        except OSError:
            continue
        return candidate
    raise OSError(f"no free metrics port in {port}..{port + tries - 1}")


def share_threads(settings: Settings, slot: HostSlot, metrics: WorkerMetrics) -> None:
    """Use this worker's share of the host's cores (called at start and before every batch)."""
    import torch

    threads = thread_share(settings.worker_threads, slot.live_workers())
    if threads is not None and threads != torch.get_num_threads():
        log.info("using %d torch threads (%d workers on this host)", threads, slot.live_workers())
        torch.set_num_threads(threads)
    metrics.threads.set(torch.get_num_threads())


def _quietly(action: Callable[[], object]) -> None:
    """A clean-up step that must not hide the way out (Redis may be gone at exit)."""
    try:
        action()
    except RedisError as exc:
        log.warning("could not finish clean-up, Redis unreachable: %s", exc)


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
