"""Attention kernels and masks: the masked softmax attention of one layer, computed so that a long row
never holds the whole ``[B, K, G, T, S]`` score tensor.

- ``attention_mask``: which key each query sees ``[B, T, S]`` (bool), from the causal order, the
  key padding, and optionally segment ids (packed rows: no token sees another record) and branch ids
  (shared-prefix rows: a suffix sees the shared trunk and itself, never the other suffix).
- ``attend``: on CPU (and for the decode cache) the queries go in blocks of ``block`` rows, each
  block's scores recomputed in the backward pass (``jax.checkpoint``), and under a causal mask each
  block reads only the keys up to its last row; on GPU with a half-precision compute dtype, cuDNN's
  fused attention (``jax.nn.dot_product_attention(implementation="cudnn")``).

The blocked path is the same arithmetic as the dense one (each row's softmax still spans all the keys
it may see; the keys a block skips are masked for every row in it), so results agree to rounding.

Shapes: B batch, T queries, S keys, N query heads, K key/value heads, G = N // K, H head dim.
"""

from __future__ import annotations

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


def _blocked(q, k, v, mask, causal: bool, block: int):
    """``_dense`` over query blocks of ``block`` rows, each recomputed in the backward pass; with
    ``causal`` (key s > query t is always masked, keys and queries in the same columns), block i
    reads keys ``[0, end_i)`` only."""
    T, S = q.shape[1], k.shape[1]
    outs = []
    for start in range(0, T, block):
        stop = min(start + block, T)
        end = min(stop, S) if causal else S

        def one(qb, k, v, mb, end=end):
            return _dense(qb, k[:, :end], v[:, :end], mb[:, :, :end])

        outs.append(jax.checkpoint(one)(q[:, start:stop], k, v, mask[:, start:stop]))
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


def _use_cudnn(dtype) -> bool:
    return jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def attend(q, k, v, mask, *, causal: bool, block: int = DEFAULT_BLOCK):
    """Masked softmax attention. q [B, T, N, H], k/v [B, S, K, H], mask [B, T, S] bool -> [B, T, N * H].

    ``causal``: the mask never lets query t see a key s > t (training rows: keys and queries are the
    same columns), so query blocks skip the keys after their last row. ``block`` <= 0 gives the dense
    computation (the ``[B, K, G, T, S]`` scores at once).
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
        out = _blocked(qg, k, v, mask, causal, block)
    return out.reshape(B, T, N * H)
