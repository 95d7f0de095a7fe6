"""CPU-only tuning, all of it in this package, and each part acting only where JAX computes on the CPU:

- ``malloc``: glibc allocator settings (one arena, no ``mmap`` for large blocks, no trimming) so that
  XLA:CPU's per-step buffers stay mapped between steps, and ``release_free_memory`` between stages.
  ``tune()`` applies them once per process, before JAX starts its threads, and only when
  ``runs_on_cpu()``: importing the model layer calls it (``ttpa_jax.model``), so every stage that
  computes with JAX is covered and a GPU or TPU process keeps its allocator as it is.
- ``attention_kernel``: the fused fp32 attention kernel (C++ in ``kernels/``, through XLA's FFI), built
  per instruction set on first use and used by ``model.attention.attend`` only on the CPU backend and
  only where it measured no slower than the ``jnp`` tiles on this kind of CPU
  (``model.kernel_calibration``).

``TTPA_MALLOC=default`` and ``TTPA_JAX_CPU_KERNEL=0`` turn either off.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

from ttpa_jax.cpu.malloc import tune_malloc

# Modules whose presence means JAX may pick an accelerator when JAX_PLATFORMS does not say.
_ACCELERATOR_MODULES = ("libtpu", "jax_plugins", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin")


def runs_on_cpu() -> bool:
    """Whether this process's JAX computes on the CPU, decided without starting JAX (the allocator must
    be set before its threads exist): ``JAX_PLATFORMS`` names ``cpu`` first, or it is unset and no
    accelerator plugin is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    if any(importlib.util.find_spec(name) is not None for name in _ACCELERATOR_MODULES):
        return False
    return not list(importlib.metadata.entry_points(group="jax_plugins"))


def tune() -> bool:
    """The allocator settings where JAX runs on the CPU (once per process); whether they are in force."""
    return runs_on_cpu() and tune_malloc()
