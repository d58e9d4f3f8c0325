"""What the benchmark measures with: FLOP counting, peak probes, timers, memory high-water marks.

- FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` counts matmuls, convolutions and attention
  from shapes, but in torch 2.14.1 it has no formula for the CPU flash-attention kernel
  (``aten._scaled_dot_product_flash_attention_for_cpu``) and counts it as zero: :func:`flop_counter`
  registers torch's own SDPA formula for it (``sdpa_flop_count``: 4·B·H·S_q·S_k·d).
- Peaks: a matmul (sgemm) and a 3×3 convolution probe on this machine, fp32 and bf16, so achieved
  GFLOP/s read as a fraction of what this CPU or GPU does at its best in the same process.
- Time: wall seconds (``perf_counter``, CUDA synchronised) and this process's CPU seconds.
- Memory: peak RSS growth on the CPU (Linux's VmHWM, reset through ``/proc/self/clear_refs``);
  ``max_memory_allocated`` on CUDA. Both sides share one process, so on the CPU this is the
  working memory a run adds on top of what is live before it (the heap is trimmed first).
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def cpu_flash_attention_flop(
    query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    """FLOPs of one CPU flash-attention call from its shapes (torch's own SDPA formula: the two
    batched matmuls q·kᵀ and p·v, 2 FLOPs per multiply-add)."""
    return int(sdpa_flop_count(query, key, value))


def flop_counter() -> FlopCounterMode:
    """A quiet ``FlopCounterMode`` that also counts the CPU flash-attention kernel."""
    mapping: dict[Any, Any] = {}
    cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_flash is not None:
        mapping[cpu_flash] = cpu_flash_attention_flop
    return FlopCounterMode(display=False, custom_mapping=mapping)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    wall_s: float
    cpu_s: float


@contextmanager
def timed(device: torch.device) -> Iterator[Timing]:
    """Wall and process-CPU seconds of the block (filled in when it ends)."""
    result = Timing(0.0, 0.0)
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    yield result
    synchronize(device)
    result.wall_s = time.perf_counter() - wall
    result.cpu_s = time.process_time() - cpu


# -- peak probes ----------------------------------------------------------------------------------


def _best_rate(fn: Callable[[], Any], flops: float, device: torch.device, repeats: int) -> float:
    """Best GFLOP/s of ``fn`` over ``repeats`` timed calls after one warm-up."""
    with torch.no_grad():
        fn()
        best = float("inf")
        for _ in range(repeats):
            with timed(device) as t:
                fn()
            best = min(best, t.wall_s)
    return flops / best / 1e9


def peak_probes(device: torch.device, quick: bool = False) -> dict[str, float]:
    """GFLOP/s of a square matmul and a 3×3 convolution (NCHW and channels_last), fp32 and bf16."""
    n = 512 if quick else (8192 if device.type == "cuda" else 1024)
    batch, channels, side = (
        (2, 64, 32) if quick else ((32, 320, 64) if device.type == "cuda" else (8, 128, 64))
    )
    repeats = 2 if quick else 5
    probes: dict[str, float] = {}
    for dtype in (torch.float32, torch.bfloat16):
        name = "fp32" if dtype == torch.float32 else "bf16"
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        probes[f"matmul_{name}"] = _best_rate(partial(torch.matmul, a, b), 2.0 * n**3, device, repeats)
        x = torch.randn(batch, channels, side, side, device=device, dtype=dtype)
        w = torch.randn(channels, channels, 3, 3, device=device, dtype=dtype)
        conv_flops = 2.0 * batch * channels * channels * 9 * side * side
        probes[f"conv3x3_{name}"] = _best_rate(
            partial(F.conv2d, x, w, padding=1), conv_flops, device, repeats
        )
        xl = x.contiguous(memory_format=torch.channels_last)
        wl = w.contiguous(memory_format=torch.channels_last)
        probes[f"conv3x3_{name}_channels_last"] = _best_rate(
            partial(F.conv2d, xl, wl, padding=1), conv_flops, device, repeats
        )
    return {k: round(v, 1) for k, v in probes.items()}


def peak_for(probes: dict[str, float], bf16: bool) -> float:
    """The reference peak: the best probe of the precision the run computes in."""
    name = "bf16" if bf16 else "fp32"
    return max(v for k, v in probes.items() if name in k)


# -- memory ---------------------------------------------------------------------------------------


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim_heap() -> None:
    """Give freed heap back to the OS (glibc), so the RSS before a run is what is live."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Peak memory the block added, in MiB (``result["peak_mib"]``, filled in when it ends)."""
    result: dict[str, float] = {"peak_mib": float("nan")}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        allocated = torch.cuda.memory_allocated(device)
        yield result
        result["peak_mib"] = (torch.cuda.max_memory_allocated(device) - allocated) / 2**20
        return
    _trim_heap()
    base: int | None = None
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        base = _status_kib("VmRSS")
    except OSError:
        pass
    yield result
    peak = _status_kib("VmHWM")
    if base is not None and peak is not None:
        result["peak_mib"] = (peak - base) / 1024


# -- per-stage hooks ------------------------------------------------------------------------------


@dataclass
class StageClock:
    """Per stage: wall time from its network's first call to its last call's end, and the FLOPs
    its calls did (when a counter is given). Stages are named by the caller. On CUDA the marks are
    events, so the hooks add no host-device synchronisation inside the sampling loop."""

    device: torch.device
    counter: FlopCounterMode | None = None
    first: dict[str, Any] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)
    flops: dict[str, int] = field(default_factory=dict)
    _open: dict[str, int] = field(default_factory=dict)
    _handles: list[Any] = field(default_factory=list)

    def _mark(self) -> Any:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def attach(self, stage: str, module: nn.Module) -> None:
        def before(*_: Any) -> None:
            if stage not in self.first:
                self.first[stage] = self._mark()
            if self.counter is not None:
                self._open[stage] = self.counter.get_total_flops()

        def after(*_: Any) -> None:
            self.last[stage] = self._mark()
            if self.counter is not None:
                done = self.counter.get_total_flops() - self._open.pop(stage)
                self.flops[stage] = self.flops.get(stage, 0) + done

        self._handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]

    def seconds(self) -> dict[str, float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return {s: start.elapsed_time(self.last[s]) / 1000 for s, start in self.first.items()}
        return {s: self.last[s] - start for s, start in self.first.items()}

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
