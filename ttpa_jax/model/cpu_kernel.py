"""The fused CPU attention kernel (``kernels/attention_cpu.cc``): built on first use, called through XLA's FFI.

XLA:CPU runs the tiled attention of ``model.attention`` as separate matmul and softmax fusions, each a
pass through memory over a tile of every head; the kernel keeps one query block's scores, exponentials
and gradients in cache and skips key blocks of 64 the mask hides (docs/benchmarks.md). fp32, head
dims that are multiples of 64, the CPU backend only; ``attention.attend`` falls back to the tiles
otherwise.

The first call compiles the source with the system's C++ compiler (``$CXX``, else ``g++``; a few
seconds) into ``<cache>/kernels`` (``core.cache.cache_root``), named by a hash of the source, the
flags, jaxlib's version and the CPU, so an edit, an upgrade or another machine rebuilds it. No
compiler, or a failed build: one warning, and the tiled path. ``TTPA_JAX_CPU_KERNEL=0`` turns the
kernel off; ``TTPA_JAX_KERNEL_THREADS`` sets its threads (default: the cores this process may run on).

Registered as batch-partitionable: on a mesh each device runs the kernel on its own rows.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib

from ttpa_jax.core.cache import cache_root

SOURCE = Path(__file__).parent / "kernels" / "attention_cpu.cc"
FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread"]
HEAD_MULTIPLE = 64  # the kernel's column block
_FWD, _BWD = "ttpa_attention_fwd", "ttpa_attention_bwd"


def _cpu() -> str:
    """This CPU's model and instruction sets (``-march=native`` builds for them): a cache shared by
    different machines keeps one library per kind of CPU."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    return "\n".join(next((x for x in lines if x.startswith(k)), "") for k in ("model name", "flags"))


def _build() -> Path:
    """The compiled library's path, compiling it if this source, these flags, this jaxlib and this CPU
    have none."""
    cxx = os.environ.get("CXX") or "g++"
    if shutil.which(cxx) is None:
        raise RuntimeError(f"no C++ compiler ({cxx}) on PATH")
    identity = " ".join([cxx, *FLAGS, jaxlib.__version__, _cpu()]).encode()
    key = hashlib.sha256(SOURCE.read_bytes() + identity).hexdigest()
    lib = cache_root() / "kernels" / f"attention_cpu-{key[:16]}.so"
    if lib.exists():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:  # built aside, then renamed: concurrent builds are safe
        part = Path(tmp) / lib.name
        cmd = [cxx, *FLAGS, "-isystem", jax.ffi.include_dir(), str(SOURCE), "-o", str(part)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        os.replace(part, lib)
    return lib


@functools.cache
def available() -> bool:
    """Whether the kernel is built and registered (once per process; a failure warns once)."""
    if os.environ.get("TTPA_JAX_CPU_KERNEL", "1") == "0":
        return False
    try:
        lib = ctypes.cdll.LoadLibrary(str(_build()))
    except (OSError, RuntimeError) as err:
        warnings.warn(f"CPU attention kernel unavailable, using the tiled attention: {err}", stacklevel=2)
        return False
    for name, symbol in ((_FWD, lib.TtpaAttentionForward), (_BWD, lib.TtpaAttentionBackward)):
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform="cpu")
        jax.ffi.register_ffi_target_as_batch_partitionable(name)
    return True


def applies(q, k, v) -> bool:
    """The kernel takes these operands: fp32, a head dim it tiles, on the CPU backend, and it is built."""
    return (jax.default_backend() == "cpu" and all(x.dtype == jnp.float32 for x in (q, k, v))
            and q.shape[-1] % HEAD_MULTIPLE == 0 and available())


def _forward(q, k, v, mask):
    """q [B, T, K, G, H] (scaled), k/v [B, S, K, H], mask [B, T, S] -> out [B, T, K, G, H], lse [B, K, G, T]."""
    if not available():
        raise RuntimeError("the CPU attention kernel is not available (see the warning above)")
    B, T, K, G, _ = q.shape
    shapes = (jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct((B, K, G, T), jnp.float32))
    return jax.ffi.ffi_call(_FWD, shapes, vmap_method="sequential")(q, k, v, mask)


@jax.custom_vjp
def fused(q, k, v, mask):
    """Masked softmax attention of the scaled queries q [B, T, K, G, H] -> [B, T, K, G, H], fp32. A query
    that sees no key gets 0."""
    return _forward(q, k, v, mask)[0]


def _fused_fwd(q, k, v, mask):
    out, lse = _forward(q, k, v, mask)
    return out, (q, k, v, mask, out, lse)


def _fused_bwd(res, g):
    q, k, v, mask, out, lse = res
    shapes = tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q, k, v))
    dq, dk, dv = jax.ffi.ffi_call(_BWD, shapes, vmap_method="sequential")(q, k, v, mask, out, lse, g)
    return dq, dk, dv, None


fused.defvjp(_fused_fwd, _fused_bwd)
