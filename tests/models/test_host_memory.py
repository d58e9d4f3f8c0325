"""models.host_memory: after keep_freed_memory(), a tensor-sized block comes from malloc's heap
(and goes back to it) instead of a fresh mmap per allocation. Checked in a child process, since
the setting lasts for the life of the process that makes it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Counts malloc's mmapped chunks (mallinfo2's hblks) while a block of argv[2] MiB is held.
PROBE = """
import ctypes, ctypes.util, sys
from models.host_memory import keep_freed_memory
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
before = libc.mallinfo2().hblks
block = libc.malloc(int(sys.argv[2]) << 20)
mapped = libc.mallinfo2().hblks - before
libc.free(block)
print(kept, mapped)
"""


def _probe(mode: str, mib: int) -> list[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE, mode, str(mib)], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()


# 16 MiB: a decoder or sr256 activation; 64 MiB: one of sr1024's skip concatenations at 1024²,
# over the 32 MiB that glibc's mmap threshold can be raised to.
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
@pytest.mark.parametrize("mib", [16, 64])
def test_a_tensor_sized_block_comes_from_the_heap_once_freed_memory_is_kept(mib: int) -> None:
    try:
        default = _probe("default", mib)
    except subprocess.CalledProcessError as error:  # no mallinfo2: musl, or glibc before 2.33
        pytest.skip(f"no mallinfo2 in this C library: {error.stderr[-200:]}")
    assert default == ["None", "1"]  # glibc's own behaviour: a fresh mmap for each such block
    assert _probe("keep", mib) == ["True", "0"]
