"""Attention kernels and masks: the masked softmax attention of one layer, computed so that a long row
never holds the whole ``[B, K, G, T, S]`` score tensor.

- ``attention_mask``: which key each query sees ``[B, T, S]`` (bool), from the causal order, the
  key padding, and optionally segment ids (packed rows: no token sees another record) and branch ids
  (shared-prefix rows: a suffix sees the shared trunk and itself, never the other suffix).
- ``attend``: on CPU (and for the decode cache) rows longer than ``block`` queries go through a
  ``lax.scan`` over query blocks whose backward pass is a second scan recomputing one block's scores
  at a time from saved log-sum-exps (a scan, so XLA cannot hoist the recomputation and keep every
  block alive, as it does with ``jax.checkpoint`` on unrolled blocks); on GPU with a half-precision
  compute dtype, cuDNN's fused attention (``jax.nn.dot_product_attention(implementation="cudnn")``).

Each row's softmax still spans every key at once, so results agree with the dense path to rounding.

Shapes: B batch, T queries, S keys, N query heads, K key/value heads, G = N // K, H head dim.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

NEG_INF = -1e30  # finite, so fully masked rows (left padding) give a uniform softmax, not NaN
DEFAULT_BLOCK = 256


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


def _dense(q, k, v, mask):
    """q [B, C, K, G, H], k/v [B, S, K, H], mask [B, C, S] -> [B, C, K, G, H] in q's dtype."""
    H = q.shape[-1]
    scores = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32) * (H**-0.5)
    scores = jnp.where(mask[:, None, None, :, :], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("bkgts,bskh->btkgh", probs, v)


def _block_scores(qb, k, mb):
    """fp32 masked scores [B, K, G, C, S] of one query block."""
    scores = jnp.einsum("btkgh,bskh->bkgts", qb, k, preferred_element_type=jnp.float32) * (qb.shape[-1] ** -0.5)
    return jnp.where(mb[:, None, None, :, :], scores, NEG_INF)


def _split_blocks(x, block, fill):
    """[B, T, ...] -> [n, B, block, ...], T padded to n * block with ``fill``."""
    B, T = x.shape[:2]
    n = -(-T // block)
    pad = [(0, 0), (0, n * block - T)] + [(0, 0)] * (x.ndim - 2)
    x = jnp.pad(x, pad, constant_values=fill)
    return x.reshape(B, n, block, *x.shape[2:]).swapaxes(0, 1)


def _join_blocks(x, T):
    """[n, B, block, ...] -> [B, T, ...]."""
    n, B, C = x.shape[:3]
    return x.swapaxes(0, 1).reshape(B, n * C, *x.shape[3:])[:, :T]


def _scan_forward(q, k, v, mask, block):
    """Outputs [B, T, K, G, H] and row log-sum-exps [n, B, K, G, C], one query block per scan step."""
    def one(_, xs):
        qb, mb = xs
        scores = _block_scores(qb, k, mb)
        lse = jax.nn.logsumexp(scores, axis=-1)  # [B, K, G, C]
        probs = jnp.exp(scores - lse[..., None]).astype(q.dtype)
        return None, (jnp.einsum("bkgts,bskh->btkgh", probs, v), lse)

    _, (out, lse) = jax.lax.scan(one, None, (_split_blocks(q, block, 0), _split_blocks(mask, block, False)))
    return _join_blocks(out, q.shape[1]), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _blocked(q, k, v, mask, block: int):
    """``_dense`` over query blocks of ``block`` rows in a ``lax.scan``; the backward pass is a second
    scan that recomputes one block's scores at a time from the saved row log-sum-exps (the
    flash-attention backward), so no step holds more than one block's ``[B, K, G, block, S]``."""
    return _scan_forward(q, k, v, mask, block)[0]


def _blocked_fwd(q, k, v, mask, block):
    out, lse = _scan_forward(q, k, v, mask, block)
    return out, (q, k, v, mask, out, lse)


def _blocked_bwd(block, res, g):
    q, k, v, mask, out, lse = res
    T, scale = q.shape[1], q.shape[-1] ** -0.5
    delta = jnp.sum(g.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, T, K, G]

    def one(carry, xs):
        dk, dv = carry
        qb, mb, gb, lb, db = xs  # [B, C, K, G, H], [B, C, S], [B, C, K, G, H], [B, K, G, C], [B, C, K, G]
        probs = jnp.exp(_block_scores(qb, k, mb) - lb[..., None])  # [B, K, G, C, S] fp32
        dv = dv + jnp.einsum("bkgts,btkgh->bskh", probs.astype(v.dtype), gb, preferred_element_type=jnp.float32)
        dp = jnp.einsum("btkgh,bskh->bkgts", gb, v, preferred_element_type=jnp.float32)
        ds = probs * (dp - jnp.moveaxis(db, 1, -1)[..., None]) * scale
        dq = jnp.einsum("bkgts,bskh->btkgh", ds.astype(q.dtype), k, preferred_element_type=jnp.float32)
        dk = dk + jnp.einsum("bkgts,btkgh->bskh", ds.astype(q.dtype), qb, preferred_element_type=jnp.float32)
        return (dk, dv), dq.astype(q.dtype)

    zeros = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
    xs = (_split_blocks(q, block, 0), _split_blocks(mask, block, False), _split_blocks(g, block, 0), lse,
          _split_blocks(delta, block, 0))
    (dk, dv), dq = jax.lax.scan(one, zeros, xs)
    return _join_blocks(dq, T), dk.astype(k.dtype), dv.astype(v.dtype), None


_blocked.defvjp(_blocked_fwd, _blocked_bwd)


def _use_cudnn(dtype) -> bool:
    return jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def attend(q, k, v, mask, *, block: int = DEFAULT_BLOCK):
    """Masked softmax attention. q [B, T, N, H], k/v [B, S, K, H], mask [B, T, S] bool -> [B, T, N * H].

    ``block`` <= 0 gives the dense computation (the ``[B, K, G, T, S]`` scores at once), as do rows of
    at most ``block`` queries.
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
    if block <= 0 or T <= block:
        out = _dense(qg, k, v, mask)
    else:
        out = _blocked(qg, k, v, mask, block)
    return out.reshape(B, T, N * H)
