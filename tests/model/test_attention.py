"""Tiled attention (``model.attention``) against the dense computation: packed records, padding and a
cache longer than the queries, in values and gradients; and which tiles it skips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttpa_jax.model import attention as A


def _inputs(B, T, S, segments, seed=0):
    """q [B, T, 6, 16], k/v [B, S, 2, 16] and the mask of rows packed with ``segments`` (record lengths per
    row; the rest of the row is padding)."""
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((B, T, 6, 16)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((B, S, 2, 16)), jnp.float32) for _ in range(2))
    seg = np.zeros((B, S), np.int32)
    for b, lengths in enumerate(segments):
        ends = np.cumsum(lengths)
        for i, (start, end) in enumerate(zip(ends - lengths, ends)):
            seg[b, start:end] = i + 1
    cols = jnp.broadcast_to(jnp.arange(T), (B, T))
    seg_ids = jnp.asarray(seg) if S == T else None
    mask = A.attention_mask(cols, jnp.asarray(seg > 0), S, segment_ids=seg_ids)
    return q, k, v, mask


@pytest.mark.parametrize("block", [8, 16, 32, 64])
@pytest.mark.parametrize("case", ["packed", "cache"])
def test_tiles_equal_dense_in_values_and_gradients(block, case):
    if case == "packed":  # two rows: two records + padding, one record + padding (block 64: 2 tiles of 48)
        q, k, v, mask = _inputs(2, 90, 90, [[30, 41], [50]])
    else:  # prefill of 45 queries into a 64-key cache (keys past the queries unseen)
        q, k, v, mask = _inputs(2, 45, 64, [[45], [40]])
    seen = np.asarray(mask).any(-1)  # [B, T] queries that see a key
    w = jnp.asarray(np.random.default_rng(1).standard_normal((*q.shape[:2], 96)), jnp.float32) * seen[..., None]

    def loss(q, k, v, block):
        return (A.attend(q, k, v, mask, block=block) * w).sum()

    dense, tiled = (np.asarray(A.attend(q, k, v, mask, block=b)) for b in (0, block))
    np.testing.assert_allclose(tiled[seen], dense[seen], atol=1e-5, rtol=0)
    assert not np.any(tiled[~seen])  # a query that sees no key: zero
    for g0, g1 in zip(jax.grad(loss, (0, 1, 2))(q, k, v, 0), jax.grad(loss, (0, 1, 2))(q, k, v, block)):
        np.testing.assert_allclose(np.asarray(g1), np.asarray(g0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("T, block, tile", [(1024, 256, 256), (896, 256, 224), (640, 256, 224), (1536, 256, 256),
                                            (90, 64, 48), (70, 8, 8)])
def test_tiles_are_sized_evenly(T, block, tile):
    """At most ``block``, as few tiles as that allows, each rounded up to 16: no tile mostly padding."""
    assert A._tile(T, block) == tile


def test_skipped_tiles_are_the_unseen_ones():
    """Causal order, packed records and padding decide the tiles; a tile is kept when any row needs it."""
    _, k, v, mask = _inputs(1, 64, 64, [[16, 40]])  # records at [0, 16) and [16, 56), padding after
    need = np.asarray(A._pad_keys(k, v, mask, 16)[3])  # [query block, key block]
    expected = np.array([[1, 0, 0, 0],   # queries 0-15: record 1 only
                         [0, 1, 0, 0],   # 16-31: record 2, keys from 16
                         [0, 1, 1, 0],
                         [0, 1, 1, 1]], bool)
    np.testing.assert_array_equal(need, expected)
    _, k, v, mask = _inputs(2, 64, 64, [[16, 40], [64]])  # a second row, one long record: every causal tile
    need2 = np.asarray(A._pad_keys(k, v, mask, 16)[3])
    np.testing.assert_array_equal(need2, np.tril(np.ones((4, 4), bool)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_one_query_equals_dense(dtype):
    """A decode step's query against a cache with left padding and unwritten columns (``_one_query``, the
    CPU path for T = 1) gives the dense path's output."""
    rng = np.random.default_rng(2)
    q = jnp.asarray(rng.standard_normal((3, 1, 6, 16)), dtype)
    k, v = (jnp.asarray(rng.standard_normal((3, 40, 2, 16)), dtype) for _ in range(2))
    kv_mask = np.zeros((3, 40), bool)
    kv_mask[0, :30] = kv_mask[1, 5:30] = kv_mask[2, 12:31] = True  # prompt + steps so far; the rest unwritten
    mask = jnp.asarray(kv_mask)[:, None, :]
    one = A._one_query(q.reshape(3, 1, 2, 3, 16), k, v, mask).reshape(3, 1, 96)
    dense = A.attend(q, k, v, mask, block=0)
    assert one.dtype == dense.dtype == dtype
    tol = 1e-6 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(np.asarray(one, np.float32), np.asarray(dense, np.float32), atol=tol, rtol=0)
    np.testing.assert_array_equal(np.asarray(A.attend(q, k, v, mask, block=16)), np.asarray(one))  # the CPU path
