"""Attention benchmark: one layer's attention (``model.attention.attend``, the default path: on a CPU where
it measured faster, the fused kernel of ``ttpa_jax.cpu.attention_kernel``, else the ``jnp`` tiles; and the tiles on
their own), forward and backward, against the dense
computation (``jax.nn.dot_product_attention``, XLA's implementation: the whole ``[B, N, T, S]`` scores
at once), on SmolLM2-135M's heads (9 query, 3 key/value, 64 wide) and the training layouts of four
tool records (673-844 tokens): packed into 2 rows of 1536, and one record per row (4 x 1024). The
tiles at each size in ``--blocks``; medians of ``--runs`` alternating runs after a warm-up (which
compiles).

Then one layer's attention as a DPO step of ``bench/method_step.py`` runs it (the policy's forward and
backward plus the reference's forward), on its two one-pair-per-prompt pairs: ours (kernel at each
``--lengths-per-octave`` grid, tiles at the default grid) on their shared-prefix rows, against PyTorch's
``scaled_dot_product_attention`` (what transformers calls, a boolean mask, grouped heads) on the
PyTorch reference's four padded rows, each per million query-key pairs the mask keeps.

Then a decode step's attention: one query per row against a KV cache of ``--cache`` columns (a tool
prompt plus the tokens generated so far), ``--batch`` rows, over ``--layers`` layers' caches (so that
they are read from memory, as in decoding): ``attend`` (on CPU ``_one_query``, the cache read in
place) against the dense einsums, and each as a fraction of the measured memory bandwidth.

    python bench/attention.py                      # about a minute on 2 CPU cores
    python bench/attention.py --blocks 64 128 256
    python bench/attention.py --skip-torch          # no PyTorch side in the DPO comparison
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from ttpa_jax.cpu import tune  # noqa: E402

tune()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ttpa_bench import report  # noqa: E402
from ttpa_bench.workloads import pairs, to_longest  # noqa: E402
from ttpa_jax.cpu.attention_kernel import applies  # noqa: E402
from ttpa_jax.model.attention import DEFAULT_BLOCK, _blocked, _dense, _tile, attend, attention_mask  # noqa: E402

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


def tiles(q, k, v, mask, block=DEFAULT_BLOCK):
    """``attend`` without the kernel: the ``jnp`` tiles of at most ``block``."""
    B, T = q.shape[:2]
    return _blocked(q.reshape(B, T, K, N // K, H), k, v, mask, _tile(T, block)).reshape(B, T, -1)


def timed(fn, q, k, v, g, mask):
    """A jitted forward + backward (gradients of <fn(q, k, v), g>) -> a call that waits for it."""
    grad = jax.jit(jax.grad(lambda q, k, v, m: jnp.sum(fn(q, k, v, m) * g), argnums=(0, 1, 2)))
    return lambda: jax.block_until_ready(grad(q, k, v, mask))


def dpo_pairs():
    """``bench/method_step.py``'s first DPO batch (2 pairs, one per prompt): its shared-prefix rows at
    each grid and its one-sequence-per-row batch cut to the longest row, as the PyTorch step gets it."""
    from ttpa_jax.train.loader import collate

    exs = pairs(np.random.default_rng(0), 2, 700, 49152, 1)
    shared = {lpo: collate(exs, 0, 64, 4096, layout="shared_prefix", lengths_per_octave=lpo) for lpo in (2, 4, 8)}
    rows = to_longest(collate(exs, 0, 64, 4096))
    return shared, np.concatenate([rows.chosen_mask, rows.rejected_mask])


def dpo_layer_ours(batch, fn=attend, seed=0):
    """A call running one layer's attention (``fn``) on shared-prefix rows (``SharedPrefixPairs``) as the
    DPO step does (forward and backward, then a forward) -> (call, query-key pairs its mask keeps)."""
    R, T = batch.sp_ids.shape
    mask = attention_mask(jnp.broadcast_to(jnp.arange(T)[None], (R, T)), jnp.asarray(batch.sp_mask), T,
                          jnp.asarray(batch.sp_segment), jnp.asarray(batch.sp_branch))
    rng = np.random.default_rng(seed)
    arr = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)  # noqa: E731
    q, k, v = arr(R, T, N, H), arr(R, T, K, H), arr(R, T, K, H)
    g = arr(R, T, N * H) * mask.any(-1)[..., None]
    backward, fwd = timed(fn, q, k, v, g, mask), jax.jit(fn)
    return lambda: (backward(), jax.block_until_ready(fwd(q, k, v, mask))), int(mask.sum())


def dpo_layer_torch(real):
    """The same for PyTorch's ``scaled_dot_product_attention`` on padded rows (``real`` [B, T] bool):
    causal over each row's real keys, the reference's forward without gradients."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(report.cores())
    B, T = real.shape
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, n, T, H, generator=gen, requires_grad=True) for n in (N, K, K))
    g = torch.randn(B, N, T, H, generator=gen)
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))[None, None] & torch.from_numpy(real.astype(bool))[:, None, None]

    def run():
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True).backward(g)
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    return run, int(mask[:, 0].logical_and(torch.from_numpy(real.astype(bool))[:, :, None]).sum())


def decode_steps(B, S, layers, seed=0):
    """Calls that run one decode step's attention through ``layers`` layers' caches [B, S, K, H] (10% of
    the columns masked: left padding and unwritten steps): ``attend``, and the dense einsums."""
    rng = np.random.default_rng(seed)
    caches = [jnp.asarray(rng.standard_normal((B, S, K, H)), jnp.float32) for _ in range(2 * layers)]
    mask = jnp.asarray(rng.random((B, 1, S)) < 0.9)
    q = jnp.asarray(rng.standard_normal((B, 1, N, H)), jnp.float32)

    def through(one_layer):
        def run(q, caches, mask):
            for k, v in zip(caches[::2], caches[1::2]):
                q = q + 0.01 * one_layer(q, k, v, mask).reshape(q.shape)
            return q
        step = jax.jit(run)
        return lambda: jax.block_until_ready(step(q, caches, mask))

    dense = lambda q, k, v, m: _dense(q.reshape(B, 1, K, N // K, H), k, v, m)  # noqa: E731
    return through(attend), through(dense)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, nargs="+", default=[128, DEFAULT_BLOCK],
                    help=f"tile sizes to time for the jnp tiles (the default: {DEFAULT_BLOCK})")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per variant (median)")
    ap.add_argument("--batch", type=int, default=8, help="decode: rows per step")
    ap.add_argument("--cache", type=int, default=832, help="decode: KV cache columns (prompt bucket + new tokens)")
    ap.add_argument("--layers", type=int, default=30, help="decode: layers' caches read per step (SmolLM2: 30)")
    ap.add_argument("--skip-torch", action="store_true", help="leave PyTorch out of the DPO comparison")
    args = ap.parse_args()
    print(report.machine_line())
    q8, k8, v8 = inputs([[8]], 8, False)[:3]
    kernel = "default: kernel" if applies(q8.reshape(1, 8, K, N // K, H), k8, v8) else "default: tiles"
    for layout, (records, T, packed) in LAYOUTS.items():
        q, k, v, g, mask = inputs(records, T, packed)
        fns = [timed(dense_reference, q, k, v, g, mask), timed(attend, q, k, v, g, mask)]
        fns += [timed(lambda q, k, v, m, b=b: tiles(q, k, v, m, b), q, k, v, g, mask) for b in args.blocks]
        times = report.median_times(fns, args.runs)
        print(f"\n{layout}: one layer's attention, forward and backward (median of {args.runs})")
        report.millis("dense (xla)", times[0])
        report.millis(kernel, times[1])
        report.ratio(f"{kernel} / dense", times[0] / times[1])
        for b, t in zip(args.blocks, times[2:]):
            report.millis(f"tiles of {b}", t)
            report.ratio(f"{kernel} / tiles of {b}", t / times[1])

    shared, real = dpo_pairs()
    shape = lambda b: "x".join(map(str, b.sp_ids.shape))  # noqa: E731
    sides = {f"ours, {kernel}, {shape(b)} ({lpo} per octave)": dpo_layer_ours(b) for lpo, b in shared.items()}
    sides[f"ours, tiles, {shape(shared[2])} (2 per octave)"] = dpo_layer_ours(shared[2], tiles)
    if not args.skip_torch:
        sides[f"PyTorch SDPA {real.shape[0]}x{real.shape[1]}"] = dpo_layer_torch(real)
    times = report.median_times([fn for fn, _ in sides.values()], args.runs)
    print(f"\nDPO step's attention, one layer: policy forward + backward, reference forward; 2 pairs, one per "
          f"prompt; ours on shared-prefix rows, PyTorch on padded rows (median of {args.runs})")
    for (label, (_, kept)), t in zip(sides.items(), times):
        report.millis(label, t)
        report.value("  per million pairs kept", t * 1e3 / (kept / 1e6), "ms", f"{kept / 1e6:.2f} M query-key pairs")

    ours, dense = decode_steps(args.batch, args.cache, args.layers)
    t_ours, t_dense = report.median_times([ours, dense], args.runs)
    bw = report.bandwidth()
    gb = 2 * args.layers * args.batch * args.cache * K * H * 4 / 1e9
    print(f"\ndecode step: {args.batch} queries against caches of {args.cache} columns, {args.layers} layers "
          f"({gb:.2f} GB of keys and values; median of {args.runs})")
    report.millis("attend (one query)", t_ours)
    report.millis("dense einsums", t_dense)
    report.ratio("attend / dense", t_dense / t_ours)
    report.value("attend of bandwidth", 100 * gb * 1e9 / t_ours / bw, "%",
                 f"{bw / 1e9:.1f} GB/s measured: jitted a * c over 256 MiB")


if __name__ == "__main__":
    main()
