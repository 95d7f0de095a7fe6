"""Teacher forcing into a decode's cache: the model reads given completions after its prompts in one
forward pass, leaving what a decode that had generated them would leave.

``teacher_force`` prefills the prompts like ``loop.generate`` (shared conversations included), then
runs the completion tokens through the model at once, writing their keys and values at the columns
a decode writes generated steps to (step ``i`` at column ``P + i``, position ``prompt_len + i``), and
records the model's top-``record_k`` distribution at every step (before the token of that step is
read). The result is a ``loop.DecodeResult`` with ``keep_cache`` state, so ``loop.continue_decoding``
forks it at any step: the gold-anchored branches of TPS (``tps.iter_anchored``) decode from it.

Shapes: B rows, U conversations, P prompt width, M the decode's token budget (the cache keeps room
for it), T <= M completion steps read (``forced_width``), V vocab, D hidden, C recorded top-k.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttpa_jax.decode.loop import DecodeResult, DecodeState, _prefilled, _spec, bucketed_inputs, row_keys
from ttpa_jax.decode.rules import GREEDY
from ttpa_jax.decode.settings import DEFAULT_BUCKET
from ttpa_jax.model.transformer import CacheSlot, Visibility

TOPK_CHUNK = 32  # completion steps projected to the vocabulary at once (bounds the [B, chunk, V] logits)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"))
def _teacher_forced(graphdef, params, conv_ids, conv_mask, row_conv, row_lengths, forced, spec):
    """conv_ids, conv_mask [U, P], row_conv, row_lengths [B] as in ``loop._prefill_and_decode``;
    forced [B, T] completion ids (T <= M) -> (cache with S = P + M columns, kv_mask [B, S], top_probs,
    top_ids [B, T, C])."""
    model = nnx.merge(graphdef, params)
    init, kv_mask = _prefilled(model, conv_ids, conv_mask, row_conv, row_lengths, spec)
    B, T = forced.shape
    P = conv_ids.shape[1]
    pos = row_lengths[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :]
    slot = CacheSlot(init.cache, jnp.full((B,), P, jnp.int32))
    h, cache = model.hidden_states(forced, Visibility(pos, kv_mask, slot=slot))  # h [B, T, D]
    k = spec.record_k

    def top(logits):  # [..., V] -> top-k probabilities and ids
        p, i = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), k)
        return p, i.astype(jnp.int32)

    first_p, first_i = top(init.logits)  # step 0's distribution: after the prompt's last token
    n = -(-(T - 1) // TOPK_CHUNK) if T > 1 else 0
    if n:
        rest = jnp.pad(h[:, : T - 1], ((0, 0), (0, n * TOPK_CHUNK - (T - 1)), (0, 0)))
        chunks = rest.reshape(B, n, TOPK_CHUNK, -1).transpose(1, 0, 2, 3)  # [n, B, chunk, D]
        ps, ids = jax.lax.map(lambda x: top(model.logits(x)), chunks)  # [n, B, chunk, C]
        ps = ps.transpose(1, 0, 2, 3).reshape(B, -1, k)[:, : T - 1]
        ids = ids.transpose(1, 0, 2, 3).reshape(B, -1, k)[:, : T - 1]
        top_probs = jnp.concatenate([first_p[:, None], ps], axis=1)
        top_ids = jnp.concatenate([first_i[:, None], ids], axis=1)
    else:
        top_probs, top_ids = first_p[:, None], first_i[:, None]
    return cache, kv_mask, top_probs, top_ids


def teacher_force(model, prompt_ids, prompt_mask, completions, *, max_new_tokens: int, record_k: int = 2,
                  bucket: int = DEFAULT_BUCKET, conv=None, lengths=None) -> DecodeResult:
    """The model reads ``completions`` (one list of ids per row, at most ``max_new_tokens`` of each
    kept) after the prompts; arguments as in ``loop.generate``.

    Returns a ``DecodeResult`` whose ``tokens`` [B, M] are the completions (pad after their
    ``lengths``), whose ``top_probs`` / ``top_ids`` [B, M, C] hold the model's distribution at every
    completion step, and whose ``state`` is the cache as if the completions had been decoded.
    """
    spec = _spec(model, max_new_tokens, GREEDY, (), (), record_k)
    ids, mask, conv, lengths = bucketed_inputs(prompt_ids, prompt_mask, conv, lengths, bucket, spec.pad_id)
    B, M = len(conv), spec.max_new_tokens
    forced = np.full((B, M), spec.pad_id, np.int32)
    kept = np.zeros(B, np.int32)
    for b, c in enumerate(completions):
        c = list(c)[:M]
        forced[b, : len(c)], kept[b] = c, len(c)
    T = forced_width(int(kept.max(initial=1)), M)  # the model reads T steps; the cache keeps room for M
    graphdef, params = nnx.split(model)
    cache, kv_mask, top_probs, top_ids = _teacher_forced(graphdef, params, ids, mask, conv, lengths,
                                                         jnp.asarray(forced[:, :T]), spec)
    probs, top = (np.zeros((B, M, record_k), np.float32), np.zeros((B, M, record_k), np.int32))
    probs[:, :T], top[:, :T] = jax.device_get((top_probs, top_ids))
    state = DecodeState(cache, kv_mask, lengths, row_keys(None, B))
    return DecodeResult(forced, kept, probs, top, state)


def forced_width(n: int, max_new_tokens: int) -> int:
    """Completion steps read for a batch whose longest completion has ``n`` tokens: the next power of
    two, at least 16 and at most ``max_new_tokens`` (a few compiled shapes; the forward pass costs what
    the completions need, not the whole token budget)."""
    return min(max_new_tokens, max(16, 1 << max(0, (n - 1).bit_length())))


__all__ = ["teacher_force", "forced_width", "TOPK_CHUNK"]
