"""host_memory.keep_freed_memory: a freed large block is reused without new page faults (as
XLA CPU's per-step temporary buffer is), and the opt-out leaves glibc's defaults."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# allocates, touches and frees a 64 MiB block twice; prints the page faults of the second time
PROBE = """
import ctypes, resource, sys
sys.path.insert(0, {root!r})
from ifes_jax.cpu import host_memory
applied = host_memory.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
def touch_fresh_block():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
touch_fresh_block()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch_fresh_block()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(env):
    out = subprocess.run([sys.executable, "-c", PROBE.format(root=ROOT)], env=os.environ | env,
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_a_freed_block_is_reused_without_page_faults():
    applied, kept = _probe({"IFES_JAX_DEFAULT_MALLOC": "0"})
    assert applied
    applied, default = _probe({"IFES_JAX_DEFAULT_MALLOC": "1"})
    # glibc's default: a fresh mapping each time, a fault per page: 16 384 pages of 4 KiB, or
    # at least 32 where the kernel backs it with 2 MiB transparent huge pages
    assert not applied and default >= 32
    assert kept * 10 < default  # the same pages again
