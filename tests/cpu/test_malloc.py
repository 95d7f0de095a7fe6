"""cpu/malloc.py: with the settings applied a freed block larger than 2 GiB stays mapped (using it
again faults no pages), and release_free_memory hands it back to the kernel.

Each check runs in a fresh interpreter: the settings bind a process for its lifetime. The settings
are glibc's: the project runs on Linux (CI, GPU and TPU hosts)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import ctypes, resource, sys
    from ttpa_jax.cpu import malloc
    assert malloc.tune_malloc()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    n = int(sys.argv[1])

    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()

    def touch():  # allocate n bytes, write every page, free; the minor faults it took
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        p = libc.malloc(n)
        ctypes.memset(p, 1, n)
        libc.free(p)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

    first, second = touch(), touch()
    kept = rss()
    malloc.release_free_memory()
    print(first, second, kept, rss())
""")


def run(nbytes: int) -> list[int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(nbytes)], capture_output=True, text=True, check=True)
    return [int(v) for v in out.stdout.split()]


def test_freed_block_stays_mapped_and_release_returns_it():
    nbytes = (2 << 30) + (256 << 20)  # beyond the 2 GiB threshold the settings once used
    first, second, kept, after_release = run(nbytes)
    assert second * 10 < first  # the second use reuses the first's pages: no trimming in between
    assert kept > nbytes  # the freed block is still mapped
    assert kept - after_release > nbytes // 2  # release_free_memory hands it back
