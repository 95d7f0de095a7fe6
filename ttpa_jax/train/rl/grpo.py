"""``train grpo``'s unit (``UNIT``: batches ``GroupEpisodes``). GRPO: group-normalised advantages, the clipped ratio objective over generated tokens (token-level
mean), and a k3 KL penalty to the reference (the same network with adapters off, as in DPO).

Groups whose rewards are all equal get zero advantages (they add only the KL term) and are counted
in ``zero_std_groups``. ``scale_rewards=False`` leaves advantages undivided (Dr. GRPO).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ttpa_jax.model.transformer import Ctx
from ttpa_jax.train.batches import GroupEpisodes
from ttpa_jax.train.rl.algorithm import Algorithm
from ttpa_jax.train.rl.config import GrpoArgs
from ttpa_jax.train.rl.losses import group_advantages, grpo_loss
from ttpa_jax.train.rl.policy import token_stats
from ttpa_jax.train.rl.session import RlUnit


def rollout_logps(policy, reference, batch, temperature: float = 1.0, chunk: int = 0):
    """(sampling policy's log-probs, reference log-probs) [B, T] at the sampling temperature, and the
    policy's hidden states, without gradients."""
    ids, mask = batch.input_ids, batch.attention_mask
    old, _, h = token_stats(policy, ids, mask, Ctx(lora=True), temperature, chunk)
    ref, _, _ = token_stats(reference, ids, mask, Ctx(lora=False), temperature, chunk)
    return jax.lax.stop_gradient(old), jax.lax.stop_gradient(ref), jax.lax.stop_gradient(h)


def make_grpo(*, kl_coef: float, epsilon_low: float, epsilon_high: float, scale_rewards: bool,
              temperature: float = 1.0, logits_chunk: int = 0) -> Algorithm:
    def host_inputs(rewards, group_size):
        adv, zero = group_advantages(rewards, group_size, scale=scale_rewards)
        return {"advantages": adv}, {"zero_std_groups": float(zero)}

    def prepare(policy, reference, value_head, batch):
        old, ref, _ = rollout_logps(policy, reference, batch, temperature, logits_chunk)
        return {"old_logp": old, "ref_logp": ref}

    def loss(policy, value_head, batch, ctx: Ctx):
        logp, entropy, _ = token_stats(policy, batch.input_ids, batch.attention_mask, ctx,
                                       temperature, logits_chunk)
        mask = batch.loss_mask
        value, sums = grpo_loss(logp, batch.old_logp, batch.ref_logp, batch.advantages, mask,
                                epsilon_low=epsilon_low, epsilon_high=epsilon_high, kl_coef=kl_coef)
        sums["entropy"] = (entropy * mask).sum()
        return value, sums

    def finalize(s):
        n = jnp.maximum(s["tokens"], 1.0)
        kl = s["kl"] / n
        return {"loss": s["pg"] / n + kl_coef * kl, "policy_loss": s["pg"] / n, "kl": kl,
                "clip_fraction": s["clipped"] / n, "entropy": s["entropy"] / n}

    return Algorithm("grpo", host_inputs, prepare, loss, finalize)


def algorithm(cfg: GrpoArgs) -> Algorithm:
    rl = cfg.rl
    return make_grpo(kl_coef=rl.kl_coef, epsilon_low=rl.epsilon, epsilon_high=rl.epsilon_high or rl.epsilon,
                     scale_rewards=rl.scale_rewards, temperature=rl.temperature or 1.0, logits_chunk=cfg.logits_chunk)


def check(cfg: GrpoArgs) -> None:
    if cfg.rl.group_size < 2:
        raise ValueError(f"--group-size {cfg.rl.group_size}: GRPO compares completions within a group; give at least 2")


UNIT = RlUnit(algorithm, GroupEpisodes, check)
