"""Prometheus metrics of the API and of the workers, all names in one place.

Metrics are built per process into an explicit registry (nothing is registered at import time),
so one test process can build several apps and workers. The API is multi-process safe: with
``PROMETHEUS_MULTIPROC_DIR`` set, values go to files in that directory and ``/metrics`` reads
them all back through a ``MultiProcessCollector``. Base units, ``_total`` counters, histograms
with buckets for seconds-to-minutes work, no job ids in labels.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

# Seconds-to-minutes: one 64x64 preview on a GPU to a queue backed up for ten minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class FinalStateMetrics(Protocol):
    """Where ``JobStore.record_final`` counts a job's end (once per job, in whichever process won)."""

    def count_final(self, status: str, latency_s: float | None) -> None: ...


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class QueueDepthCollector(Collector):
    """``unclip_queue_depth`` read from Redis at scrape time (a failed read is left out)."""

    def __init__(self, depth: Callable[[], int]):
        self._depth = depth

    def collect(self) -> Iterator[Metric]:
        try:
            value = self._depth()
        except Exception:
            return
        yield GaugeMetricFamily("unclip_queue_depth", "Jobs waiting in the queue", value=value)


class ApiMetrics:
    """What the API process records."""

    def __init__(self, registry: CollectorRegistry | None):
        self.registry = registry
        self.http_requests = Counter(
            "unclip_http_requests_total",
            "HTTP requests by route template, method and status code",
            ["route", "method", "status"],
            registry=registry,
        )
        self.jobs = Counter("unclip_jobs_total", "Jobs by final status", ["status"], registry=registry)

    def count_final(self, status: str, latency_s: float | None) -> None:
        """A job ended through this process (a cancel of a queued job); latency is the worker's."""
        self.jobs.labels(status).inc()

    @classmethod
    def create(cls) -> ApiMetrics:
        """Per-app registry, or the multi-process files when ``PROMETHEUS_MULTIPROC_DIR`` is set."""
        return cls(None if multiprocess_dir() else CollectorRegistry(auto_describe=True))

    def scrape_registry(self, depth: Callable[[], int]) -> CollectorRegistry:
        """The registry ``/metrics`` renders: this process's (or every process's) metrics plus queue depth."""
        registry = CollectorRegistry()
        if self.registry is None:
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            registry.register(_Forward(self.registry))
        registry.register(QueueDepthCollector(depth))
        return registry


class _Forward(Collector):
    """Exposes another registry's metrics inside a scrape registry."""

    def __init__(self, source: CollectorRegistry):
        self._source = source

    def collect(self) -> Iterator[Metric]:
        yield from self._source.collect()


class WorkerMetrics:
    """What a worker process records (served by its own HTTP server)."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.queue_wait = Histogram(
            "unclip_queue_wait_seconds",
            "Time from submit to the start of the job's batch",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.job_latency = Histogram(
            "unclip_job_latency_seconds",
            "Time from submit to the job's final state",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stage_latency = Histogram(
            "unclip_stage_latency_seconds",
            "Sampling time of one stage for one batch",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "unclip_batch_size",
            "Images sampled together in one batch",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.images = Counter(
            "unclip_images_generated_total", "Images generated and stored", registry=registry
        )
        self.text_cache_hits = Counter(
            "unclip_text_cache_hits_total",
            "Prompts whose CLIP text encoding came from the cache",
            registry=registry,
        )
        self.text_cache_misses = Counter(
            "unclip_text_cache_misses_total", "Prompts encoded by CLIP (cache misses)", registry=registry
        )
        self.jobs = Counter("unclip_jobs_total", "Jobs by final status", ["status"], registry=registry)
        self.worker_up = Gauge(
            "unclip_worker_up", "1 while this worker's model is loaded and serving", registry=registry
        )
        self.gpu_memory = Gauge(
            "unclip_gpu_memory_bytes", "GPU memory allocated by this worker (CUDA only)", registry=registry
        )
        self.threads = Gauge(
            "unclip_worker_threads",
            "torch intra-op threads of this worker (its share of the host)",
            registry=registry,
        )

    def count_final(self, status: str, latency_s: float | None) -> None:
        self.jobs.labels(status).inc()
        if latency_s is not None:
            self.job_latency.observe(max(0.0, latency_s))
