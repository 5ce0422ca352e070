"""glibc's malloc kept from returning freed memory to the kernel, for CPU training loops.

XLA CPU allocates each execution's temporary buffer (all of a train step's activations and
gradients: ~100 MB for the quickstart step, GBs at full width) in one block and frees it when the
step ends. glibc serves blocks over 32 MB with a fresh `mmap` and unmaps them on `free`, so
every step touches new pages: one page fault per 4 KiB (15 500 per quickstart step, 25 ms of
kernel time). With `mmap` off and no trimming, the block comes from the heap and the next step
reuses the same pages: −10 % per quickstart step (docs/benchmarks.md). This is `mallopt`, the
in-process form of MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=…; the process keeps its peak
memory until it exits. IFES_JAX_DEFAULT_MALLOC=1 leaves glibc's defaults.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
NEVER_TRIM = 2 ** 31 - 1  # bytes (an int): a free block at the heap's top larger than this is returned


def keep_freed_memory(environ=os.environ) -> bool:
    """Serve every allocation from glibc's heap and keep freed memory there; True if done (Linux
    with glibc, not opted out)."""
    if sys.platform != "linux" or environ.get("IFES_JAX_DEFAULT_MALLOC") == "1":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
