"""Keep the step's buffers mapped between steps (glibc malloc settings).

XLA on CPU allocates each step's temporaries afresh (one buffer of ``memory_analysis()
.temp_size_in_bytes``, gigabytes for a mid-size model). glibc serves allocations that large with
``mmap`` and returns them with ``munmap``, so every step faults every page in again and the kernel
zeroes it: on SmolLM2-135M at batch 2 x 1024 that was a third of the step's CPU time. With one malloc
arena, no ``mmap`` for large blocks and no trimming, freed memory stays in the heap and the next step
reuses it without a page fault. The cost: the process keeps its peak heap until it exits.

``tune_malloc()`` applies this with ``mallopt``; the arena limit only binds threads that have not
allocated yet, so call it before jax starts its thread pools: every ``python -m ttpa_jax.<stage>``
does (``core.cli.run``), and so does importing ``ttpa_jax.train.trainer``. ``TTPA_MALLOC=default``
leaves malloc as it is. The same settings as environment variables, for any process:
``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736``.

Not the whole answer: in the real training runs of 2026-12-03 the step still faulted its pages in
(system time 11-16% of CPU; docs/benchmarks.md, "System time").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
_done = False


def tune_malloc() -> bool:
    """Apply the settings once per process; False where malloc is not glibc's or it is turned off."""
    global _done
    if _done or os.environ.get("TTPA_MALLOC", "") == "default":
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_ARENA_MAX, 1) and mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    _done = bool(ok)
    return _done
