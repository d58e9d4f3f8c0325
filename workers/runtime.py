"""The worker's resident model: loaded once, then sampled batch after batch.

An explicit state machine (cog's ``WorkerState``): STARTING while the pipeline loads, READY
between batches, BUSY during one, DEFUNCT after a failed load or an error that leaves the device
unusable (a CUDA error other than out-of-memory); a DEFUNCT worker stops taking jobs so that its
supervisor restarts it. Transitions are checked by :meth:`Runtime._assert_state`.
"""

from __future__ import annotations

import enum
import logging
import os
import sys
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from contract.metrics import WorkerMetrics
from contract.settings import Settings
from models.configs import SamplingConfig
from workers.text_cache import TextEncodingCache

if TYPE_CHECKING:
    from models.execution import ExecutionConfig
    from models.pipeline import GenerationOutput, GenerationRequest, PreviewCallback, UnclipPipeline

log = logging.getLogger("unclip.worker")

Loader = Callable[[], "UnclipPipeline"]
CacheFactory = Callable[[str], TextEncodingCache]


class RuntimeState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    DEFUNCT = "defunct"


class InvalidStateError(RuntimeError):
    pass


class Runtime:
    """Owns the pipeline and the text cache; one batch at a time."""

    def __init__(self, loader: Loader, cache_factory: CacheFactory, metrics: WorkerMetrics | None = None):
        self._loader = loader
        self._cache_factory = cache_factory
        self._metrics = metrics
        self._state = RuntimeState.STARTING
        self._pipeline: UnclipPipeline | None = None
        self._cache: TextEncodingCache | None = None

    @property
    def state(self) -> RuntimeState:
        return self._state

    def _assert_state(self, *allowed: RuntimeState) -> None:
        if self._state not in allowed:
            names = ", ".join(s.name for s in allowed)
            raise InvalidStateError(f"runtime is {self._state.name}, expected {names}")

    def _set_state(self, state: RuntimeState) -> None:
        log.debug("runtime %s -> %s", self._state.name, state.name)
        self._state = state
        if self._metrics is not None:
            self._metrics.worker_up.set(1 if state in (RuntimeState.READY, RuntimeState.BUSY) else 0)

    @property
    def pipeline(self) -> UnclipPipeline:
        self._assert_state(RuntimeState.READY, RuntimeState.BUSY)
        assert self._pipeline is not None
        return self._pipeline

    @property
    def default_sampling(self) -> SamplingConfig:
        return self.pipeline.config.sampling

    def start(self) -> None:
        """Load the pipeline (STARTING → READY, or DEFUNCT and re-raise)."""
        self._assert_state(RuntimeState.STARTING)
        started = time.perf_counter()
        try:
            self._pipeline = self._loader()
        except Exception:
            self._set_state(RuntimeState.DEFUNCT)
            raise
        self._cache = self._cache_factory(self._pipeline.model_id)
        log.info(
            "model %s loaded on %s in %.1fs",
            self._pipeline.model_id,
            self._pipeline.device,
            time.perf_counter() - started,
        )
        self._set_state(RuntimeState.READY)

    def stop(self) -> None:
        self._set_state(RuntimeState.DEFUNCT)
        self._pipeline = None

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        size: int,
        sampling: SamplingConfig,
        *,
        progress: Callable[[str, int, int], None] | None = None,
        canceled: Callable[[], Collection[int]] | None = None,
        preview: PreviewCallback | None = None,
    ) -> GenerationOutput:
        """One batch: text encodings through the cache, then the chain (READY → BUSY → READY)."""
        self._assert_state(RuntimeState.READY)
        pipeline, cache = self.pipeline, self._cache
        assert cache is not None
        self._set_state(RuntimeState.BUSY)
        try:
            started = time.perf_counter()
            text = cache.encode([r.prompt for r in requests], pipeline.encode_text)
            encode_s = time.perf_counter() - started
            output = pipeline.generate(
                requests, size, sampling, text=text, progress=progress, canceled=canceled, preview=preview
            )
        except Exception as exc:
            self._set_state(RuntimeState.DEFUNCT if _is_fatal(exc) else RuntimeState.READY)
            raise
        self._set_state(RuntimeState.READY)
        # The pipeline's "clip" timing covers only moving the cached rows to the device.
        output.timings["clip"] = encode_s + output.timings.get("clip", 0.0)
        self._observe(output)
        return output

    def _observe(self, output: GenerationOutput) -> None:
        if self._metrics is None:
            return
        for stage, seconds in output.timings.items():
            self._metrics.stage_latency.labels(stage).observe(seconds)
        pipeline = self.pipeline
        if pipeline.device.type == "cuda":
            import torch

            self._metrics.gpu_memory.set(torch.cuda.memory_allocated(pipeline.device))


def _is_fatal(exc: BaseException) -> bool:
    """A CUDA error other than out-of-memory leaves the context unusable: restart the process."""
    message = str(exc)
    if "out of memory" in message.lower():
        return False
    return "CUDA error" in message or "device-side assert" in message


# -- start-up: the fast path the settings ask for --------------------------------------------------


def configure_openmp(policy: str) -> None:
    """Set ``OMP_WAIT_POLICY`` from the settings before torch starts (OpenMP reads it once, when
    torch loads); an operator's own environment value wins. Passive waiting keeps a worker's idle
    threads from spinning on cores that other threads or workers need."""
    if policy == "default" or "OMP_WAIT_POLICY" in os.environ:
        return
    if "torch" in sys.modules:
        log.warning("OMP_WAIT_POLICY=%s set after torch loaded: it has no effect", policy.upper())
    os.environ["OMP_WAIT_POLICY"] = policy.upper()


def configure_compile_cache(cache_dir: Path | None) -> None:
    """Point Inductor's on-disk cache at ``cache_dir`` (``TORCHINDUCTOR_CACHE_DIR``), before anything
    compiles; an operator's own environment value wins. Inductor keys each compiled graph by the
    graph, the torch version and the machine's compiler and CPU, so a restarted worker (or another
    worker sharing the directory: entries are written to a temporary file and renamed) loads what
    an earlier one compiled instead of generating and building its C++ or Triton code again."""
    if cache_dir is None:
        return
    # Importing torch._dynamo fills in the variable with torch's default: only another value
    # is the operator's own.
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    torch_default = default_cache_dir()
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR", torch_default) != torch_default:
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir.resolve())


def execution_from_settings(settings: Settings) -> ExecutionConfig:
    """The worker's fast-path switches (``UNCLIP_FUSED_ATTENTION``, ``UNCLIP_CHANNELS_LAST``, ...)."""
    from models.execution import ExecutionConfig

    return ExecutionConfig(
        fused_attention=settings.fused_attention,
        channels_last=settings.channels_last,
        channels_last_devices=settings.channels_last_devices,
        autocast=settings.autocast,
        autocast_stages=settings.autocast_stages,
        cast_weights_once=settings.cast_weights_once,
        compile=settings.compile_unets,
        compile_stages=settings.compile_stages,
        cuda_graphs=settings.cuda_graphs,
        micro_batch_sr256=settings.micro_batch_sr256,
        micro_batch_sr1024=settings.micro_batch_sr1024,
        micro_batch_devices=settings.micro_batch_devices,
        native_norms_on_gpu=settings.native_norms_on_gpu,
        fold_scale_shift=settings.fold_scale_shift,
        in_place_activations=settings.in_place_activations,
        fuse_embedding_projections=settings.fuse_embedding_projections,
    )


def pipeline_loader(settings: Settings, device: str) -> Loader:
    """The worker's loader: the pipeline with the settings' fast path, then, when the UNets are
    compiled (or captured as CUDA graphs), one warm-up batch per batch bucket up to ``max_batch``,
    so the compile time counts in start-up rather than in the first jobs."""

    def load() -> UnclipPipeline:
        from models.pipeline import load_pipeline

        execution = execution_from_settings(settings)
        pipeline = load_pipeline(settings.weights, device, settings.dtype, execution)
        if execution.compile or (execution.cuda_graphs and pipeline.device.type == "cuda"):
            warm_up(pipeline, settings.max_batch)
        return pipeline

    return load


def warm_up(pipeline: UnclipPipeline, max_batch: int) -> float:
    """Run every stage once at each batch bucket up to ``max_batch`` (one step a stage): each
    network shape a job can meet is compiled now. Returns the seconds it took."""
    from models.pipeline import STAGE_SIDES, GenerationRequest

    started = time.perf_counter()
    one_step = pipeline.config.sampling.with_overrides(
        {stage: {"steps": 1} for stage in ("prior", "decoder", "sr256", "sr1024")}
    )
    buckets = sorted({min(b, max_batch) for b in pipeline.execution.graph_buckets})
    for batch in buckets:
        pipeline.generate([GenerationRequest("warm-up", n=batch)], STAGE_SIDES[-1][1], one_step)
    seconds = time.perf_counter() - started
    hits, misses = compile_cache_counts()
    log.info(
        "compiled and warmed up batch buckets %s in %.1fs (Inductor cache: %d graphs loaded, %d compiled)",
        buckets,
        seconds,
        hits,
        misses,
    )
    return seconds


def compile_cache_counts() -> tuple[int, int]:
    """Graphs this process loaded from Inductor's on-disk cache, and graphs it had to compile."""
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    return int(inductor["fxgraph_cache_hit"]), int(inductor["fxgraph_cache_miss"])
