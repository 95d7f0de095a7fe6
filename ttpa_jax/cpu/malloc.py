"""Keep the step's buffers mapped between steps (glibc malloc settings).

XLA on CPU allocates each step's temporaries afresh (one buffer of ``memory_analysis()
.temp_size_in_bytes``, gigabytes for a mid-size model). glibc serves allocations that large with
``mmap`` and returns them with ``munmap``, so every step faults every page in again and the kernel
zeroes it: on SmolLM2-135M at batch 2 x 1024 that was a third of the step's CPU time. With one malloc
arena, no ``mmap`` for large blocks and no trimming, freed memory stays in the heap and the next step
reuses it without a page fault. The cost: the process keeps its peak heap until it exits.

Trimming must be off, not merely rare: with a threshold of 2 GiB (the largest positive value
``mallopt`` takes) a 30-layer step, whose temporaries exceed it, handed its heap top back every
step and faulted it in again (1.4-1.9 M minor faults per 20 s, a quarter of the CPU time, in the
ablation's SFT stage); ``-1`` turns trimming off (docs/benchmarks.md, "System time").

``tune_malloc()`` applies this with ``mallopt``; the arena limit only binds threads that have not
allocated yet, so call it before jax starts its thread pools: ``ttpa_jax.cpu.tune()`` does, where JAX
computes on the CPU, when the model layer is imported. ``TTPA_MALLOC=default`` leaves malloc as it is.
The same settings as environment variables, for any process:
``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776`` (1 TiB: never reached).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
_done = False


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def tune_malloc() -> bool:
    """Apply the settings once per process; False where malloc is not glibc's or it is turned off."""
    global _done
    if _done or os.environ.get("TTPA_MALLOC", "") == "default":
        return _done
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # -1 is read as SIZE_MAX: the heap is never trimmed
    ok = mallopt(M_ARENA_MAX, 1) and mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, -1)
    _done = bool(ok)
    return _done


def release_free_memory() -> None:
    """Hand the heap's free pages back to the kernel (``malloc_trim``). With trimming off the heap
    only grows, and large aligned blocks do not always fit the holes earlier ones left; call this
    between stages whose buffers differ (training, then decoding) so that a process does not hold
    the sum of their peaks. Costs one round of page faults in the next stage; no-op unless tuned."""
    trim = getattr(_libc(), "malloc_trim", None) if _done else None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
        trim(0)
