"""Keep the memory that tensors free inside the process (glibc's malloc), for CPU sampling.

A UNet forward on the CPU allocates and frees dozens of activation buffers of a few MB each. By
default glibc serves a block that large with its own ``mmap`` and hands it back to the kernel on
``free``, and raises that threshold only adaptively, so a new buffer often starts as fresh pages
that the kernel must fault in and zero: on the bundled decoder at 64² (FLOP-matched, batch 4),
``silu`` and ``group_norm`` on the 96-channel maps took 10–11 ms a call instead of 0.3–0.5 ms, and
the whole forward 104 ms instead of 93 (2-core AMX Xeon, docs/benchmark.md). Raising the mmap
threshold to its maximum and the trim threshold far above it keeps freed blocks in the heap for
the next step to reuse. The cost is memory: the process keeps its high-water mark instead of
shrinking between jobs, which a worker with a resident model does anyway.

glibc will not raise the threshold past 32 MiB, so blocks that large were still mapped and faulted
in per use: sr1024's first-level maps are 32 MiB a row (8 channels of 1024² in float32, plus
PyTorch's alignment) and its skip concatenations 64. ``M_MMAP_MAX`` 0 serves those from the heap
too (a thread's own arena hands a request it cannot hold to the main one): sr1024's forward at
batch 1 went from 575–738 to 484–505 ms (2-core AVX2 EPYC, three paired runs). The heap keeps
what the largest job needed: over 24 generations at 256² and 1024² (batches 1–3, one process)
the resident size stopped growing after the first batch of three, at 1.64 GiB (1.62 GiB with
per-use maps).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc refuses more on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 2**31 - 1  # the most mallopt takes (an int): the heap's top is in effect never trimmed
TOP_PAD = 64 * 1024 * 1024  # grow the heap in steps of 64 MiB rather than per request


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks for reuse (see the module docstring). Returns
    whether it took effect: False off Linux, on a C library without ``mallopt`` (musl), or when
    glibc refuses a value."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX),
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (_M_TOP_PAD, TOP_PAD),
        (_M_MMAP_MAX, 0),  # nothing mapped per block, however large: see the module docstring
    )
    accepted = all(mallopt(param, value) == 1 for param, value in settings)
    if not accepted:
        log.warning("malloc refused a setting; freed tensor memory goes back to the kernel as before")
    return accepted
