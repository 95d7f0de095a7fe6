"""Attention benchmark: one layer's tiled attention (``model.attention.attend``), forward and backward,
against the dense computation (``jax.nn.dot_product_attention``, XLA's implementation: the whole
``[B, N, T, S]`` scores at once), on SmolLM2-135M's heads (9 query, 3 key/value, 64 wide) and the
training layouts of four tool records (673-844 tokens): packed into 2 rows of 1536, and one record
per row (4 x 1024). Each tile size in ``--blocks``; medians of ``--runs`` alternating runs after a
warm-up (which compiles).

    python bench/attention.py                      # about a minute on 2 CPU cores
    python bench/attention.py --blocks 64 128 256
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from ttpa_jax.core.malloc import tune_malloc  # noqa: E402

tune_malloc()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ttpa_jax.model.attention import DEFAULT_BLOCK, attend, attention_mask  # noqa: E402

import report  # noqa: E402

N, K, H = 9, 3, 64
LAYOUTS = {"packed 2 x 1536": ([[673, 844], [760, 764]], 1536, True),
           "rows 4 x 1024": ([[673], [844], [760], [764]], 1024, False)}


def inputs(records_per_row, T, packed, seed=0):
    """q [B, T, N, H], k/v [B, T, K, H], an output cotangent [B, T, N * H] and the mask [B, T, T]."""
    B = len(records_per_row)
    seg, real = np.zeros((B, T), np.int32), np.zeros((B, T), bool)
    for b, lengths in enumerate(records_per_row):
        start = 0
        for i, n in enumerate(lengths):
            seg[b, start:start + n], real[b, start:start + n] = i + 1, True
            start += n
    cols = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
    mask = attention_mask(cols, jnp.asarray(real), T, jnp.asarray(seg) if packed else None)
    rng = np.random.default_rng(seed)
    arr = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)  # noqa: E731
    return arr(B, T, N, H), arr(B, T, K, H), arr(B, T, K, H), arr(B, T, N * H), mask


def dense_reference(q, k, v, mask):
    B, T = q.shape[:2]
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation="xla").reshape(B, T, -1)


def timed(fn, q, k, v, g, mask):
    """A jitted forward + backward (gradients of <fn(q, k, v), g>) -> a call that waits for it."""
    grad = jax.jit(jax.grad(lambda q, k, v, m: jnp.sum(fn(q, k, v, m) * g), argnums=(0, 1, 2)))
    return lambda: jax.block_until_ready(grad(q, k, v, mask))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, nargs="+", default=[64, DEFAULT_BLOCK, 256],
                    help=f"tile sizes to time (the model's default: {DEFAULT_BLOCK})")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per variant (median)")
    args = ap.parse_args()
    print(report.machine_line())
    for layout, (records, T, packed) in LAYOUTS.items():
        q, k, v, g, mask = inputs(records, T, packed)
        fns = [timed(dense_reference, q, k, v, g, mask)]
        fns += [timed(lambda q, k, v, m, b=b: attend(q, k, v, m, block=b), q, k, v, g, mask) for b in args.blocks]
        times = report.median_times(fns, args.runs)
        print(f"\n{layout}: one layer's attention, forward and backward (median of {args.runs})")
        report.millis("dense (xla)", times[0])
        for b, t in zip(args.blocks, times[1:]):
            report.millis(f"tiles of {b}", t)
            report.ratio(f"tiles of {b} / dense", times[0] / t)


if __name__ == "__main__":
    main()
