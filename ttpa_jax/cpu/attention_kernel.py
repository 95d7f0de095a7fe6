"""The fused CPU attention kernel (``kernels/attention_cpu.cc``): built on first use, called through XLA's FFI,
and used only where it measured at least as fast as the ``jnp`` tiles on this kind of CPU.

XLA:CPU runs the tiled attention of ``model.attention`` as separate matmul and softmax fusions, each a
pass through memory over a tile of every head; the kernel keeps one query block's scores, exponentials
and gradients in cache and skips key blocks of 64 the mask hides (docs/benchmarks.md). fp32, head
dims that are multiples of 64, the CPU backend only; ``attention.attend`` falls back to the tiles
otherwise.

The first call compiles the source with the system's C++ compiler (``$CXX``, else ``g++``; a few
seconds) into ``<cache>/kernels`` (``core.cache.cache_root``), named by a hash of the source, the
flags, jaxlib's version and the CPU, so an edit, an upgrade or another machine rebuilds it. The source
picks its vector width and register blocking from the instruction set it is built for (AVX-512, AVX2,
128-bit). No compiler, or a failed build: one warning, and the tiled path.

Then ``model.kernel_calibration`` times the kernel against the tiles on one representative shape (a
subprocess, about 10 s, once per built library) and stores the result beside the library
(``attention_cpu-<hash>.json``): where the kernel was slower, ``attend`` takes the tiles and the
process says so in one line. ``TTPA_JAX_CPU_KERNEL`` chooses: ``auto`` (the default, as measured),
``1`` (the kernel wherever it builds, no calibration), ``0`` (never). ``TTPA_JAX_KERNEL_THREADS`` sets
its threads (default: the cores this process may run on).

Registered as batch-partitionable: on a mesh each device runs the kernel on its own rows.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
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


def isa() -> str:
    """The widest vector instruction set of this CPU that the kernel is built for: ``avx512f``, ``avx2``,
    ``avx`` or the machine's name (``aarch64``, ...), as benchmarks report it."""
    flags = next((x for x in _cpu().splitlines() if x.startswith("flags")), "").split()
    return next((f for f in ("avx512f", "avx2", "avx") if f in flags), platform.machine())


def _mode() -> str:
    mode = os.environ.get("TTPA_JAX_CPU_KERNEL", "auto")
    if mode not in ("auto", "0", "1"):
        raise ValueError(f"TTPA_JAX_CPU_KERNEL={mode!r}: expected auto, 1 or 0")
    return mode


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
    if _mode() == "0":
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


def faster_than_tiles(timing: dict) -> bool:
    """The rule: the kernel where its calibration time is at most the tiles'."""
    return timing["kernel_s"] <= timing["tiles_s"]


def calibration() -> dict:
    """The built library's calibration (``kernel_s``, ``tiles_s``, ``isa``): read from beside it, or
    measured now by ``model.kernel_calibration`` in a subprocess and stored there."""
    path = _build().with_suffix(".json")
    if path.exists():
        return json.loads(path.read_text())
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:  # written aside, then renamed
        part = Path(tmp) / path.name
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        done = subprocess.run([sys.executable, "-m", "ttpa_jax.model.kernel_calibration", str(part)], env=env,
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"calibration failed (exit {done.returncode}): {last}")
        timing = {**json.loads(part.read_text()), "isa": isa()}
        part.write_text(json.dumps(timing))
        os.replace(part, path)
    return timing


@functools.cache
def enabled() -> bool:
    """Whether ``attend`` uses the kernel in this process (decided once): built, and either forced
    (``TTPA_JAX_CPU_KERNEL=1``) or calibrated at least as fast as the tiles on this kind of CPU."""
    mode = _mode()
    if mode == "0" or not available():
        return False
    if mode == "1":
        return True
    try:
        timing = calibration()
    except (OSError, RuntimeError, ValueError, KeyError, subprocess.TimeoutExpired) as err:
        warnings.warn(f"CPU attention kernel not calibrated, using the tiled attention: {err}", stacklevel=2)
        return False
    if faster_than_tiles(timing):
        return True
    print(f"ttpa-jax: the CPU attention kernel took {timing['kernel_s'] / timing['tiles_s']:.2f}x the time of "
          f"the jnp tiles on this CPU ({timing.get('isa', isa())}): attention uses the tiles "
          "(TTPA_JAX_CPU_KERNEL=1 forces the kernel)", file=sys.stderr)
    return False


def applies(q, k, v) -> bool:
    """``attend`` sends these operands to the kernel: fp32, a head dim it tiles, on the CPU backend, and
    the kernel is enabled here (``enabled``)."""
    return (jax.default_backend() == "cpu" and all(x.dtype == jnp.float32 for x in (q, k, v))
            and q.shape[-1] % HEAD_MULTIPLE == 0 and enabled())


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
