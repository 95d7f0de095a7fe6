"""The policy's per-token quantities for RL: log-probs, entropies, and PPO's value head.

Shapes: B sequences, T padded length, D hidden size, V vocabulary. Column t of every ``[B, T]``
array belongs to the token at t (predicted from the hidden state at t - 1); column 0 is 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ttpa_jax.model.transformer import Ctx, Visibility, positions_from_mask


def _shift_right(a):
    """[B, T] quantities of the tokens at t + 1 -> of the tokens at t (column 0 gets 0)."""
    return jnp.pad(a[:, :-1], ((0, 0), (1, 0)))


def _next_token_stats(logits, nxt):
    """logits [B, C, V] float32 and the ids they predict nxt [B, C] -> (log-probs of nxt, entropies)."""
    logprobs = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    picked = jnp.take_along_axis(logprobs, nxt[..., None], axis=-1)[..., 0]
    return picked, jax.lax.stop_gradient(-(jnp.exp(logprobs) * logprobs).sum(-1))


def token_stats(model, input_ids, attention_mask, ctx: Ctx = Ctx(), temperature: float = 1.0, chunk: int = 0):
    """(logp [B, T], entropy [B, T], hidden [B, T, D]): log p(token t | tokens < t) under the
    sampling distribution (logits / temperature, as in TRL), the entropy of that distribution, and
    the final hidden states (for a value head).

    ``chunk > 0`` runs the LM head over that many positions at a time, recomputed in the backward
    pass (``--logits-chunk``): no [B, T, V] buffer exists.
    """
    h, _ = model.hidden_states(input_ids, Visibility(positions_from_mask(attention_mask), attention_mask), ctx=ctx)
    scale = 1.0 if temperature in (0.0, 1.0) else 1.0 / temperature
    nxt = jnp.concatenate([input_ids[:, 1:], input_ids[:, :1]], axis=1)  # the token each position predicts
    B, T, D = h.shape
    if chunk <= 0 or chunk >= T:
        picked, entropy = _next_token_stats(model.logits(h) * scale, nxt)
    else:
        n = -(-T // chunk)
        pad = n * chunk - T
        h_chunks = jnp.pad(h, ((0, 0), (0, pad), (0, 0))).reshape(B, n, chunk, D).swapaxes(0, 1)  # [n, B, C, D]
        nxt_chunks = jnp.pad(nxt, ((0, 0), (0, pad))).reshape(B, n, chunk).swapaxes(0, 1)  # [n, B, C]
        one = jax.checkpoint(lambda hc, ic: _next_token_stats(model.logits(hc) * scale, ic))
        out = jax.lax.map(lambda xs: one(*xs), (h_chunks, nxt_chunks))  # ([n, B, C], [n, B, C])
        picked, entropy = (a.swapaxes(0, 1).reshape(B, n * chunk)[:, :T] for a in out)
    return _shift_right(picked), _shift_right(entropy), h


class ValueHead(nnx.Module):
    """PPO's critic on the policy: one linear map of the last hidden state to a scalar, zero
    initialised (every value starts at 0), trained with the adapters."""

    def __init__(self, hidden_size: int, seed: int = 0):
        self.proj = nnx.Linear(hidden_size, 1, kernel_init=nnx.initializers.zeros, rngs=nnx.Rngs(seed))

    def __call__(self, hidden):
        """hidden [B, T, D] -> values [B, T]: column t is the value of the state before token t."""
        return _shift_right(self.proj(hidden.astype(jnp.float32))[..., 0])
