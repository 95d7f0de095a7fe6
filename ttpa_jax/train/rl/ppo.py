"""``train ppo``'s unit (``UNIT``: batches ``ValuedEpisodes``). PPO as TL-Training runs it
(DeepSpeed-Chat's trainer): per-token rewards -kl_ctl (logp - ref) with the episode's reward clipped
to +-clip_reward_value on its last generated token, GAE (gamma 1.0, lam 0.95), the clipped policy
loss (cliprange 0.2) and the clipped value loss (cliprange_value 0.2).

The critic is a value head on the policy (``policy.ValueHead``), trained with the adapters: the
update minimises policy loss + vf_coef * value loss in one step.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ttpa_jax.model.transformer import Ctx
from ttpa_jax.train.batches import ValuedEpisodes
from ttpa_jax.train.rl.algorithm import Algorithm
from ttpa_jax.train.rl.config import PpoArgs
from ttpa_jax.train.rl.grpo import rollout_logps
from ttpa_jax.train.rl.losses import gae, ppo_loss, ppo_token_rewards
from ttpa_jax.train.rl.policy import token_stats
from ttpa_jax.train.rl.session import RlUnit


def make_ppo(*, kl_ctl: float, clip_reward_value: float, cliprange: float, cliprange_value: float,
             gamma: float, lam: float, vf_coef: float, temperature: float = 1.0,
             logits_chunk: int = 0) -> Algorithm:
    def host_inputs(rewards, group_size):
        return {"scores": np.asarray(rewards, np.float32)}, {}

    def prepare(policy, reference, value_head, batch):
        mask = batch.loss_mask
        old, ref, h = rollout_logps(policy, reference, batch, temperature, logits_chunk)
        values = value_head(h) * mask
        rewards = ppo_token_rewards(old, ref, batch.scores, mask, kl_ctl=kl_ctl,
                                    clip_reward_value=clip_reward_value)
        adv, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
        return {"old_logp": old, "ref_logp": ref, "old_values": values, "advantages": adv, "returns": returns}

    def loss(policy, value_head, batch, ctx: Ctx):
        logp, entropy, h = token_stats(policy, batch.input_ids, batch.attention_mask, ctx,
                                       temperature, logits_chunk)
        mask = batch.loss_mask
        value, sums = ppo_loss(logp, batch.old_logp, value_head(h), batch.old_values, batch.advantages,
                               batch.returns, mask, cliprange=cliprange, cliprange_value=cliprange_value,
                               vf_coef=vf_coef)
        sums["entropy"] = (entropy * mask).sum()
        sums["kl"] = ((logp - batch.ref_logp) * mask).sum()
        sums["returns"] = batch.returns.sum()
        sums["advantages"] = batch.advantages.sum()
        return value, sums

    def finalize(s):
        n = jnp.maximum(s["tokens"], 1.0)
        return {"loss": s["pg"] / n + vf_coef * s["vf"] / n, "policy_loss": s["pg"] / n, "value_loss": s["vf"] / n,
                "kl": s["kl"] / n, "approx_kl": s["approx_kl"] / n, "clip_fraction": s["clipped"] / n,
                "entropy": s["entropy"] / n, "returns": s["returns"] / n, "advantages": s["advantages"] / n}

    return Algorithm("ppo", host_inputs, prepare, loss, finalize, value_head=True)


def algorithm(cfg: PpoArgs) -> Algorithm:
    rl = cfg.rl
    return make_ppo(kl_ctl=rl.kl_coef, clip_reward_value=rl.clip_reward_value, cliprange=rl.epsilon,
                    cliprange_value=rl.cliprange_value, gamma=rl.gamma, lam=rl.lam, vf_coef=rl.vf_coef,
                    temperature=rl.temperature or 1.0, logits_chunk=cfg.logits_chunk)


UNIT = RlUnit(algorithm, ValuedEpisodes)
