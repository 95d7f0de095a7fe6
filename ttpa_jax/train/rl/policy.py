"""The policy's per-token quantities for RL: log-probs, entropies, and PPO's value head.

Shapes: B sequences, T padded length, D hidden size, V vocabulary. Column t of every ``[B, T]``
array belongs to the token at t (predicted from the hidden state at t - 1); column 0 is 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ttpa_jax.model.transformer import Ctx, positions_from_mask


def _shift_right(a):
    """[B, T] quantities of the tokens at t + 1 -> of the tokens at t (column 0 gets 0)."""
    return jnp.pad(a[:, :-1], ((0, 0), (1, 0)))


def token_stats(model, input_ids, attention_mask, ctx: Ctx = Ctx(), temperature: float = 1.0):
    """(logp [B, T], entropy [B, T], hidden [B, T, D]): log p(token t | tokens < t) under the
    sampling distribution (logits / temperature, as in TRL), the entropy of that distribution, and
    the final hidden states (for a value head)."""
    h, _ = model.hidden_states(input_ids, positions_from_mask(attention_mask), attention_mask, ctx=ctx)
    logits = model.logits(h)  # [B, T, V] float32
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    logz = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    logprobs = logits - logz
    nxt = jnp.concatenate([input_ids[:, 1:], input_ids[:, :1]], axis=1)  # the token each position predicts
    picked = jnp.take_along_axis(logprobs, nxt[..., None], axis=-1)[..., 0]
    entropy = -(jnp.exp(logprobs) * logprobs).sum(-1)
    return _shift_right(picked), _shift_right(jax.lax.stop_gradient(entropy)), h


class ValueHead(nnx.Module):
    """PPO's critic on the policy: one linear map of the last hidden state to a scalar, zero
    initialised (every value starts at 0), trained with the adapters."""

    def __init__(self, hidden_size: int, seed: int = 0):
        self.proj = nnx.Linear(hidden_size, 1, kernel_init=nnx.initializers.zeros, rngs=nnx.Rngs(seed))

    def __call__(self, hidden):
        """hidden [B, T, D] -> values [B, T]: column t is the value of the state before token t."""
        return _shift_right(self.proj(hidden.astype(jnp.float32))[..., 0])
