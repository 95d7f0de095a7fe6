"""The math of the RL stage as pure functions: group advantages, the GRPO objective, TL-Training's
PPO rewards (KL penalty per token, clipped score on the last token), GAE, and the PPO losses.

Token arrays are ``[B, T]`` aligned with ``scoring.token_logps_and_vocab_mean``: column t scores the token at t
given the tokens before it; ``mask [B, T]`` is 1 on the tokens the policy generated (prompt,
tool-result and padding tokens are 0). Every loss is a token-level mean: sum over masked tokens of
the whole batch divided by their count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


# --------------------------------------------------------------------------- GRPO
def group_advantages(rewards: np.ndarray, group_size: int, scale: bool = True, eps: float = 1e-4):
    """(advantages [R], groups whose rewards are all equal) for rewards [R] in consecutive groups.

    a = r - mean(group), divided by the group's standard deviation (unbiased, + ``eps``) when
    ``scale``; ``scale=False`` is the Dr. GRPO form. A group of equal rewards gets zero advantages.
    """
    r = np.asarray(rewards, np.float64).reshape(-1, group_size)
    centred = r - r.mean(axis=1, keepdims=True)
    std = r.std(axis=1, ddof=1, keepdims=True) if group_size > 1 else np.zeros_like(centred[:, :1])
    flat = np.all(np.isclose(r, r[:, :1], rtol=0, atol=1e-9), axis=1)
    adv = centred / (std + eps) if scale else centred
    adv[flat] = 0.0
    return adv.reshape(-1).astype(np.float32), int(flat.sum())


def kl_k3(logp, ref_logp):
    """Per-token KL estimate exp(ref - logp) - (ref - logp) - 1 (>= 0; Schulman's k3, TRL's form)."""
    d = ref_logp - logp
    return jnp.exp(d) - d - 1.0


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, *, epsilon_low: float, epsilon_high: float,
              kl_coef: float):
    """(loss, sums) of the clipped GRPO objective.

    logp, old_logp, ref_logp [B, T]; advantages [B] (one per sequence); mask [B, T].
    Per token: -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) + kl_coef * k3(policy, ref), rho the
    ratio to the policy that sampled. ``sums``: additive sums for the metrics (``grpo_metrics``).
    """
    ratio = jnp.exp(logp - old_logp)
    a = advantages[:, None]
    pg = -jnp.minimum(ratio * a, jnp.clip(ratio, 1 - epsilon_low, 1 + epsilon_high) * a)
    kl = kl_k3(logp, ref_logp)
    per_token = pg + kl_coef * kl if kl_coef else pg
    tokens = jnp.maximum(mask.sum(), 1.0)
    clipped = ((ratio < 1 - epsilon_low) & (a < 0)) | ((ratio > 1 + epsilon_high) & (a > 0))
    sums = {"pg": (pg * mask).sum(), "kl": (kl * mask).sum(), "clipped": (clipped * mask).sum(),
            "tokens": mask.sum()}
    return (per_token * mask).sum() / tokens, sums


# --------------------------------------------------------------------------- PPO
def ppo_token_rewards(old_logp, ref_logp, scores, mask, *, kl_ctl: float, clip_reward_value: float):
    """TL-Training's per-token rewards [B, T]: -kl_ctl (logp - ref) on every generated token, plus the
    sequence score clipped to +-clip_reward_value on the last generated token. scores [B]."""
    T = mask.shape[1]
    last = (T - 1) - jnp.argmax(jnp.flip(mask, axis=1) > 0, axis=1)  # [B] last generated column
    at_last = (jnp.arange(T)[None, :] == last[:, None]) & (mask.sum(1, keepdims=True) > 0)
    clipped = jnp.clip(scores, -clip_reward_value, clip_reward_value)
    return (-kl_ctl * (old_logp - ref_logp) + at_last * clipped[:, None]) * mask


def gae(rewards, values, mask, *, gamma: float, lam: float):
    """(advantages, returns) [B, T] by generalised advantage estimation over the generated tokens.

    Tokens with mask 0 (tool results between turns) are skipped: a generated token's successor is the
    next generated token, and the episode ends after the last one. Unmasked columns get 0.
    """
    def step(carry, xs):
        next_v, next_a = carry
        r, v, m = xs
        a = r + gamma * next_v - v + gamma * lam * next_a
        keep = m > 0
        return (jnp.where(keep, v, next_v), jnp.where(keep, a, next_a)), jnp.where(keep, a, 0.0)

    B = rewards.shape[0]
    init = (jnp.zeros((B,), rewards.dtype), jnp.zeros((B,), rewards.dtype))
    _, adv = jax.lax.scan(step, init, (rewards.T, values.T, mask.T), reverse=True)
    adv = adv.T
    return adv, (adv + values) * mask


def ppo_loss(logp, old_logp, values, old_values, advantages, returns, mask, *, cliprange: float,
             cliprange_value: float, vf_coef: float):
    """(loss, sums): TL-Training's (DeepSpeed-Chat's) clipped policy loss and clipped value loss,
    token-level means, combined as pg + vf_coef * vf. All inputs [B, T]."""
    tokens = jnp.maximum(mask.sum(), 1.0)
    ratio = jnp.exp((logp - old_logp) * mask)
    pg = jnp.maximum(-advantages * ratio, -advantages * jnp.clip(ratio, 1 - cliprange, 1 + cliprange))
    v_clipped = jnp.clip(values, old_values - cliprange_value, old_values + cliprange_value)
    vf = 0.5 * jnp.maximum((values - returns) ** 2, (v_clipped - returns) ** 2)
    pg_loss, vf_loss = (pg * mask).sum() / tokens, (vf * mask).sum() / tokens
    clipped = (jnp.abs(ratio - 1) > cliprange) * mask
    sums = {"pg": (pg * mask).sum(), "vf": (vf * mask).sum(), "clipped": clipped.sum(), "tokens": mask.sum(),
            "approx_kl": (kl_k3(logp, old_logp) * mask).sum()}
    return pg_loss + vf_coef * vf_loss, sums
