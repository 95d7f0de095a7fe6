"""The CPU attention kernel against the ``jnp`` tiles on one representative shape, timed on this CPU.

``ttpa_jax.cpu.attention_kernel`` runs this module once per built library (per source, flags, jaxlib and kind of CPU), in
a subprocess so that the timing never runs inside the trace that asked for the kernel, and keeps its
answer beside the library: the kernel is used only where it measured at least as fast as the tiles.

The shape: one layer of SmolLM2-135M's attention (9 query heads, 3 key/value heads, 64 wide), forward
and backward, on 2 causal rows of 1024 tokens with some left padding, as an SFT or DPO step runs it;
the median of ``RUNS`` alternating runs after a warm-up that compiles each. About 10 s on 2 cores.

    python -m ttpa_jax.model.kernel_calibration OUT.json
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ttpa_jax.cpu import attention_kernel as cpu_kernel  # noqa: E402
from ttpa_jax.model.attention import DEFAULT_BLOCK, _blocked, _scaled, _tile, attention_mask  # noqa: E402

B, T, K, G, H = 2, 1024, 3, 3, 64
RUNS = 3


def _case(seed: int = 0):
    """q [B, T, K, G, H], k/v [B, T, K, H], the output cotangent and the causal mask [B, T, T]."""
    rng = np.random.default_rng(seed)
    real = np.ones((B, T), bool)
    real[1, :200] = False  # a shorter record, left-padded
    mask = attention_mask(jnp.broadcast_to(jnp.arange(T)[None], (B, T)), jnp.asarray(real), T)
    arr = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)  # noqa: E731
    return arr(B, T, K, G, H), arr(B, T, K, H), arr(B, T, K, H), arr(B, T, K, G, H), mask


def _timer(fn, q, k, v, g, mask):
    """A call running fn's jitted forward and backward once and returning its wall time in seconds."""
    # every operand an argument: a mask closed over is a constant XLA spends seconds folding
    step = jax.jit(jax.grad(lambda q, k, v, g, m: jnp.sum(fn(q, k, v, m) * g), argnums=(0, 1, 2)))
    jax.block_until_ready(step(q, k, v, g, mask))  # compiles

    def run() -> float:
        start = time.perf_counter()
        jax.block_until_ready(step(q, k, v, g, mask))
        return time.perf_counter() - start
    return run


def measure() -> dict:
    """Median seconds of the kernel and of the tiles on the calibration shape."""
    if not cpu_kernel.available():
        raise RuntimeError("the kernel did not build (see the warning above)")
    q, k, v, g, mask = _case()
    kernel = _timer(lambda q, k, v, m: cpu_kernel.fused(_scaled(q), k, v, m), q, k, v, g, mask)
    tiles = _timer(lambda q, k, v, m: _blocked(q, k, v, m, _tile(T, DEFAULT_BLOCK)), q, k, v, g, mask)
    times = {"kernel": [], "tiles": []}
    for _ in range(RUNS):  # alternating, so that a change in the machine's load hits both
        times["kernel"].append(kernel())
        times["tiles"].append(tiles())
    return {f"{name}_s": statistics.median(ts) for name, ts in times.items()}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m ttpa_jax.model.kernel_calibration OUT.json")
    json.dump(measure(), open(sys.argv[1], "w"))
