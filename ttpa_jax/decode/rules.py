"""Next-token choice rules: greedy, temperature, top-k and top-p (nucleus), as pure functions.

The order follows transformers' logits warpers: divide by the temperature, keep the top-k logits,
then keep the smallest set of tokens whose probability reaches top-p. Draws use one PRNG key per
row folded with the row's step, so a row's sample does not depend on what else is in the batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. ``temperature == 0`` is greedy (argmax)."""

    temperature: float = 0.0
    """Softmax temperature; 0 picks the most likely token."""
    top_k: int = 0
    """Keep only the k most likely tokens (0: all)."""
    top_p: float = 1.0
    """Keep the smallest set of most likely tokens whose probability reaches top_p (1: all)."""

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = Sampling()


def top_k_filter(logits, k: int):
    """logits [B, V]: all but the k largest per row set to -inf (k = 0 keeps all)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][:, -1:]  # [B, 1]
    return jnp.where(logits >= kth, logits, -jnp.inf)


def top_p_filter(logits, p: float):
    """logits [B, V]: keep the most likely tokens until their probability reaches p (at least one)."""
    if p >= 1.0:
        return logits
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # [B, V] descending
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability mass strictly above each token
    n_keep = jnp.maximum(jnp.sum(before < p, axis=-1, keepdims=True), 1)  # [B, 1]
    threshold = jnp.take_along_axis(sorted_logits, n_keep - 1, axis=-1)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def warp_logits(logits, sampling: Sampling):
    """The logits [B, V] that a sampled token is drawn from."""
    x = logits.astype(jnp.float32) / sampling.temperature
    return top_p_filter(top_k_filter(x, sampling.top_k), sampling.top_p)


def choose_tokens(logits, keys, steps, sampling: Sampling):
    """Next token ids [B] from logits [B, V]; keys [B] per-row PRNG keys, steps [B] int."""
    if sampling.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    warped = warp_logits(logits, sampling)
    step_keys = jax.vmap(jax.random.fold_in)(keys, steps)
    return jax.vmap(jax.random.categorical)(step_keys, warped).astype(jnp.int32)
