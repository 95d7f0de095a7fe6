"""Attention kernels and masks: the masked softmax attention of one layer, computed so that a long row
never holds the whole ``[B, K, G, T, S]`` score tensor.

- ``attention_mask``: which key each query sees ``[B, T, S]`` (bool), from the causal order, the
  key padding, and optionally segment ids (packed rows: no token sees another record) and branch ids
  (shared-prefix rows: a suffix sees the shared trunk and itself, never the other suffix).
- ``attend``: on CPU in fp32, the fused kernel of ``ttpa_jax.cpu.attention_kernel`` (C++ through XLA's FFI, built on first
  use); where it does not apply or is not built, rows longer than ``block`` queries are computed in
  tiles of at most ``block`` x ``block``, sized evenly (``_tile``): a ``lax.scan`` over query blocks,
  each an online softmax over key blocks, where a ``lax.cond`` skips every tile that no query of the
  batch sees (above the causal diagonal, across packed records, padding); the backward pass is a
  second scan recomputing one tile's scores at a time from saved log-sum-exps (a scan, so XLA cannot
  hoist the recomputation and keep every block alive, as it does with ``jax.checkpoint`` on unrolled
  blocks). On GPU with a
  half-precision compute dtype, cuDNN's fused attention
  (``jax.nn.dot_product_attention(implementation="cudnn")``). A decode step's single query on CPU reads
  the cache in place as a broadcast product and two sums (``_one_query``).

Results agree with the dense path to rounding on every query that sees a key; a query that sees
none (left padding) gets an output that nothing reads (dense: the mean value, tiled and kernel: zero).

Shapes: B batch, T queries, S keys, N query heads, K key/value heads, G = N // K, H head dim.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ttpa_jax.cpu import attention_kernel as cpu_kernel

NEG_INF = -1e30  # finite, so fully masked rows (left padding) give no NaN
DEFAULT_BLOCK = 256  # tile rows and columns: the fastest of 128-512 on SmolLM2 shapes (docs/benchmarks.md)


def attention_mask(q_cols, kv_mask, S: int, segment_ids=None, branch_ids=None):
    """[B, T, S] bool: query at column ``q_cols[b, t]`` sees key ``s`` when ``s <= q_cols``, the key is a
    real token (``kv_mask [B, S]``), the segments agree (``segment_ids [B, S]``, queries and keys in
    the same columns, no cache) and the key's branch is 0 (the shared trunk) or the query's own
    (``branch_ids [B, S]``)."""
    cols = jnp.arange(S)
    mask = (cols[None, None, :] <= q_cols[:, :, None]) & kv_mask[:, None, :].astype(bool)
    if segment_ids is not None:
        mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
    if branch_ids is not None:
        bk = branch_ids[:, None, :]
        mask = mask & ((bk == 0) | (bk == branch_ids[:, :, None]))
    return mask


def even_chunks(T: int, chunk: int) -> tuple[int, int]:
    """``(n, size)``: the fewest chunks of at most ``chunk`` positions that cover ``T``, sized as evenly
    as they can be (``n * size - T < n`` padded positions, e.g. T = 384, chunk = 256 -> 2 x 192): the
    LM head's chunks and the attention tiles."""
    n = -(-T // chunk)
    return n, -(-T // n)


def _dense(q, k, v, mask):
    """q [B, C, K, G, H], k/v [B, S, K, H], mask [B, C, S] -> [B, C, K, G, H] in q's dtype."""
    H = q.shape[-1]
    scores = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32) * (H**-0.5)
    scores = jnp.where(mask[:, None, None, :, :], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("bkgts,bskh->btkgh", probs, v)


def _one_query(q, k, v, mask):
    """A decode step's attention, q [B, 1, K, G, H] against the cache k/v [B, S, K, H] (mask [B, 1, S]) ->
    [B, 1, K, G, H], as broadcast products summed over H and then S: XLA:CPU reads the cache once in its
    own layout, where the einsums of ``_dense`` first copy it into heads-major order (2.5x slower over
    SmolLM2's 30 layers, docs/benchmarks.md)."""
    H = q.shape[-1]
    prods = q[:, 0, None].astype(jnp.float32) * k[:, :, :, None, :].astype(jnp.float32)  # [B, S, K, G, H]
    scores = prods.sum(-1) * (H**-0.5)  # [B, S, K, G]
    scores = jnp.where(mask[:, 0, :, None, None], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=1)
    out = (probs[..., None] * v[:, :, :, None, :].astype(jnp.float32)).sum(1)  # [B, K, G, H]
    return out[:, None].astype(q.dtype)


def _split_blocks(x, block, fill, axis=1):
    """Split ``axis`` (length T) of x into [n, ..., block, ...] (blocks first), T padded to n * block with
    ``fill``."""
    T = x.shape[axis]
    n = -(-T // block)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, n * block - T)
    x = jnp.pad(x, pad, constant_values=fill)
    x = x.reshape(*x.shape[:axis], n, block, *x.shape[axis + 1:])
    return jnp.moveaxis(x, axis, 0)


def _join_blocks(x, T, axis=1):
    """The inverse of ``_split_blocks``: [n, ..., block, ...] -> the blocks joined on ``axis``, cut to T."""
    x = jnp.moveaxis(x, 0, axis)
    x = x.reshape(*x.shape[:axis], -1, *x.shape[axis + 2:])
    return jax.lax.slice_in_dim(x, 0, T, axis=axis)


def _pad_keys(k, v, mask, block):
    """Keys, values [B, S', K, H] and mask [B, T, S'] with S' = S padded to a multiple of ``block`` (padding
    never visible), and the block map [nq, nk] bool: query block i sees some key of key block j in some
    row. Pairs outside the map (above the causal diagonal, across packed records, padding) are skipped."""
    B, T, S = mask.shape
    nq, nk = -(-T // block), -(-S // block)
    kv_pad = ((0, 0), (0, nk * block - S), (0, 0), (0, 0))
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, nk * block - S)), constant_values=False)
    need = jnp.pad(mask, ((0, 0), (0, nq * block - T), (0, 0))).reshape(B, nq, block, nk, block).any(axis=(0, 2, 4))
    return jnp.pad(k, kv_pad), jnp.pad(v, kv_pad), mask, need


def _heads_major(k, v, mask, block):
    """``_pad_keys`` with the keys laid out [B, K, H, S'] (transposed) and the values [B, K, S', H]: every
    tile's matmul then takes its operands as stored, contraction axis last on the left and first on the
    right, so XLA:CPU copies no tile into another layout (tiles batch over (B, K))."""
    k, v, mask, need = _pad_keys(k, v, mask, block)
    return k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3), mask, need


def _key_block(x, j, block, axis=2):
    """Key block ``j`` (``block`` columns of ``axis``) of keys, values, their gradients or a mask."""
    return jax.lax.dynamic_slice_in_dim(x, j * block, block, axis=axis)


def _mm(spec, a, b):
    """A tile's einsum, accumulated in fp32."""
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _scaled(q):
    """Queries times the softmax scale 1 / sqrt(H), applied once per call instead of once per tile score."""
    return q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)


def _scan_forward(q, k, v, mask, block):
    """Outputs [B, T, K, G, H] and row log-sum-exps [nq, B, K, G, C]: a scan over query blocks, each an
    online softmax over the key blocks it needs (a ``lax.cond`` skips the others). Masked scores are
    set to ``NEG_INF`` once and not masked again after the exponential: while a row has seen no key its
    running sum counts masked keys, and the first real key's correction factor ``exp(NEG_INF - m)`` = 0
    wipes them. A row that sees no key at all (left padding) gets a zero output and a log-sum-exp of
    ``-NEG_INF``, so that the backward pass gives it zero probabilities. Tiles run head-major
    ([B, K, G, C, H] queries)."""
    kt, v, mask, need = _heads_major(k, v, mask, block)  # kt [B, K, H, S'], v [B, K, S', H]
    B, C, (K, G, H) = q.shape[0], block, q.shape[2:]

    def one(_, xs):
        qb, mb, need_i = xs  # [B, K, G, C, H], [B, C, S'], [nk]

        def visit(carry, j):
            def add(carry):
                m, l, acc = carry  # running max and sum [B, K, G, C], output sum [B, K, G, C, H]
                mj = _key_block(mb, j, block)[:, None, None]  # [B, 1, 1, C, block]
                s = jnp.where(mj, _mm("bkgth,bkhs->bkgts", qb, _key_block(kt, j, block, 3)), NEG_INF)
                m_new = jnp.maximum(m, s.max(-1))
                p = jnp.exp(s - m_new[..., None])  # masked keys: 0 once the row has seen a key (docstring)
                corr = jnp.exp(m - m_new)
                pv = _mm("bkgts,bksh->bkgth", p.astype(q.dtype), _key_block(v, j, block))
                return m_new, l * corr + p.sum(-1), acc * corr[..., None] + pv
            return jax.lax.cond(need_i[j], add, lambda c: c, carry), None

        init = (jnp.full((B, K, G, C), NEG_INF, jnp.float32), jnp.zeros((B, K, G, C), jnp.float32),
                jnp.zeros((B, K, G, C, H), jnp.float32))
        (m, l, acc), _ = jax.lax.scan(visit, init, jnp.arange(need.shape[1]))
        seen = m > NEG_INF / 2  # [B, K, G, C]: the row saw a key
        out = jnp.where(seen[..., None], acc / l[..., None], 0.0)
        return None, (out.astype(q.dtype), jnp.where(seen, m + jnp.log(l), -NEG_INF))

    qh = _scaled(q).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, H]
    _, (out, lse) = jax.lax.scan(one, None, (_split_blocks(qh, block, 0, axis=3), _split_blocks(mask, block, False),
                                             need))
    out = _join_blocks(out, q.shape[1], axis=3)  # [nq, B, K, G, C, H] -> [B, K, G, T, H]
    return out.transpose(0, 3, 1, 2, 4), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _blocked(q, k, v, mask, block: int):
    """``_dense`` over ``block`` x ``block`` tiles: a scan over query blocks, an online softmax over the
    key blocks each needs, tiles nobody sees skipped; the backward pass recomputes one tile's scores at
    a time from the saved row log-sum-exps (the flash-attention backward), so no step holds more than
    one tile's ``[B, K, G, block, block]``."""
    return _scan_forward(q, k, v, mask, block)[0]


def _blocked_fwd(q, k, v, mask, block):
    out, lse = _scan_forward(q, k, v, mask, block)
    return out, (q, k, v, mask, out, lse)


def _blocked_bwd(block, res, g):
    """The flash-attention backward over the tiles the forward visited, each tile's probabilities
    recomputed key-major (``[B, K, block, G, C]``, the transpose of the forward's scores) so that all
    five of its matmuls take their operands as stored: dQ accumulates transposed ([B, K, H, G, C]) per
    query block, dK and dV over the whole scan."""
    q, k0, v0, mask0, out, lse = res
    T, H, S = q.shape[1], q.shape[-1], k0.shape[1]
    scale = H**-0.5
    kt, v, mask, need = _heads_major(k0, v0, mask0, block)  # kt [B, K, H, S'], v [B, K, S', H]
    k = kt.transpose(0, 1, 3, 2)  # [B, K, S', H]
    delta = jnp.sum(g.astype(jnp.float32) * out.astype(jnp.float32), axis=-1).transpose(0, 2, 3, 1)  # [B, K, G, T]
    qh, gh = _scaled(q).transpose(0, 2, 3, 1, 4), g.transpose(0, 2, 3, 1, 4)  # [B, K, G, T, H], q scaled

    def one(carry, xs):
        qb, mb, gb, lb, db, need_i = xs  # [B, K, G, C, H], [B, S', C], [B, K, G, C, H], [B, K, G, C] x 2, [nk]
        qt, gt = qb.transpose(0, 1, 4, 2, 3), gb.transpose(0, 1, 4, 2, 3)  # [B, K, H, G, C]
        lb, db = lb[:, :, None], db[:, :, None]  # [B, K, 1, G, C]

        def visit(carry, j):
            def tile(carry):
                dqt, dk, dv = carry
                kj, vj = _key_block(k, j, block), _key_block(v, j, block)  # [B, K, block, H]
                mj = _key_block(mb, j, block, 1)[:, None, :, None, :]  # [B, 1, block, 1, C]
                p = jnp.exp(jnp.where(mj, _mm("bksh,bkhgt->bksgt", kj, qt), NEG_INF) - lb)  # [B, K, block, G, C]
                dv_j = _mm("bksgt,bkgth->bksh", p.astype(v.dtype), gb)
                ds = (p * (_mm("bksh,bkhgt->bksgt", vj, gt) - db)).astype(q.dtype)  # dS / scale
                dk_j = _mm("bksgt,bkgth->bksh", ds, qb)
                dqt = dqt + _mm("bkhs,bksgt->bkhgt", _key_block(kt, j, block, 3), ds)
                add = lambda d, dj: jax.lax.dynamic_update_slice_in_dim(  # noqa: E731
                    d, _key_block(d, j, block) + dj, j * block, axis=2)
                return dqt, add(dk, dk_j), add(dv, dv_j)

            return jax.lax.cond(need_i[j], tile, lambda c: c, carry), None

        dk, dv = carry
        (dqt, dk, dv), _ = jax.lax.scan(visit, (jnp.zeros(qt.shape, jnp.float32), dk, dv), jnp.arange(need.shape[1]))
        return (dk, dv), (dqt * scale).transpose(0, 1, 3, 4, 2).astype(q.dtype)  # [B, K, G, C, H]

    zeros = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
    xs = (_split_blocks(qh, block, 0, axis=3), _split_blocks(mask.transpose(0, 2, 1), block, False, axis=2),
          _split_blocks(gh, block, 0, axis=3), lse, _split_blocks(delta, block, 0, axis=3), need)
    (dk, dv), dq = jax.lax.scan(one, zeros, xs)
    dq = _join_blocks(dq, T, axis=3).transpose(0, 3, 1, 2, 4)  # [B, T, K, G, H]
    back = lambda d, like: d[:, :, :S].transpose(0, 2, 1, 3).astype(like.dtype)  # noqa: E731 - [B, S, K, H]
    return dq, back(dk, k0), back(dv, v0), None


_blocked.defvjp(_blocked_fwd, _blocked_bwd)


def _tile(T: int, block: int) -> int:
    """Tile size for T queries: at most ``block``, sized evenly and rounded up to 16 (a vector width),
    e.g. T = 896 -> 224 (4 tiles, none mostly padding), T = 1024 -> 256."""
    return min(block, -(-even_chunks(T, block)[1] // 16) * 16)


def _use_cudnn(dtype) -> bool:
    return jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def attend(q, k, v, mask, *, block: int = DEFAULT_BLOCK):
    """Masked softmax attention. q [B, T, N, H], k/v [B, S, K, H], mask [B, T, S] bool -> [B, T, N * H].

    On CPU, fp32 rows of more than one query go to the fused kernel (``ttpa_jax.cpu.attention_kernel``) where it is built.
    Otherwise ``block`` <= 0 gives the dense computation (the ``[B, K, G, T, S]`` scores at once), as do
    rows of at most ``block`` queries, except a single query (a decode step) on CPU: ``_one_query``;
    longer rows the tiles of ``_blocked``.
    """
    B, T, N, H = q.shape
    K = k.shape[2]
    if _use_cudnn(q.dtype) and T > 1:
        try:  # cuDNN's fused kernel; a layout it does not take falls through to the blocked path
            out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation="cudnn")
            return out.reshape(B, T, N * H)
        except Exception:  # noqa: BLE001 - any refusal at trace time means "not this kernel"
            pass
    qg = q.reshape(B, T, K, N // K, H)
    if T == 1 and block > 0 and jax.default_backend() == "cpu":
        out = _one_query(qg, k, v, mask)
    elif block > 0 and cpu_kernel.applies(qg, k, v):
        out = cpu_kernel.fused(_scaled(qg), k, v, mask.astype(bool))
    elif block <= 0 or T <= block:
        out = _dense(qg, k, v, mask)
    else:
        out = _blocked(qg, k, v, mask, _tile(T, block))
    return out.reshape(B, T, N * H)
