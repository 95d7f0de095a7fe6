"""``train grpo`` and ``train ppo``'s settings: the shared ``RunArgs`` plus ``RlConfig`` (flags without
a prefix: ``--group-size``, ``--reward``, ...). No JAX."""

from __future__ import annotations

import dataclasses
from typing import Annotated, ClassVar

import tyro

from ttpa_jax.tools.esm import ErrorWeights
from ttpa_jax.train.config import RunArgs


@dataclasses.dataclass(frozen=True)
class RlConfig:
    """The RL stage (used by ``train grpo`` and ``train ppo``): rollouts with tools that run, rewards,
    GRPO's or PPO's update."""

    reward: str = "esm+format"
    """Reward: a weighted sum of esm, tl, format and answer, e.g. esm, tl, esm+format, 0.5*esm+0.5*tl+0.2*format."""
    group_size: int = 4
    """Completions sampled per prompt (GRPO's group)."""
    prompts_per_step: int = 2
    """Prompts per step; a step's batch is prompts_per_step x group_size episodes."""
    num_iterations: int = 1
    """Optimizer updates on each batch of rollouts."""
    max_new_tokens: int = 128
    """Most tokens generated per model turn."""
    max_turns: int = 2
    """Most model turns per episode (calls are executed and the model continues until it answers)."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    top_k: int = 0
    """Sample from the k most likely tokens only (0: no limit)."""
    kl_coef: float = 0.04
    """KL to the reference: GRPO's k3 penalty weight; PPO's per-token kl_ctl (TL-Training: 0.4)."""
    epsilon: float = 0.2
    """Clipping of the policy ratio to [1 - epsilon, 1 + epsilon] (PPO's cliprange)."""
    epsilon_high: float = 0.0
    """GRPO: upper clip 1 + epsilon_high (DAPO's clip-higher); 0 uses epsilon."""
    scale_rewards: bool = True
    """GRPO: divide advantages by the group's reward std; off, the Dr. GRPO form."""
    clip_reward_value: float = 5.0
    """PPO: the episode reward is clipped to +-this."""
    cliprange_value: float = 0.2
    """PPO: clipping of the value update around the rollout's values."""
    gamma: float = 1.0
    """PPO: GAE discount."""
    lam: float = 0.95
    """PPO: GAE lambda."""
    vf_coef: float = 0.1
    """PPO: weight of the value loss (the value head shares the policy's trunk)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RlArgs(RunArgs):
    """``train grpo`` / ``train ppo``: RL on the tool-call turns of {messages, tools} records, with
    sampled multi-turn episodes whose calls run on the bundled toolbox."""

    rl: Annotated[RlConfig, tyro.conf.OmitArgPrefixes] = RlConfig()
    esm: ErrorWeights = ErrorWeights()
    """ESM's error weights for the esm reward (what one error of each type costs), as ``sample --esm.*``."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class GrpoArgs(RlArgs):
    """``train grpo``: group-normalised advantages, clipped ratio objective, k3 KL to the reference."""

    objective: ClassVar[str] = "grpo"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PpoArgs(RlArgs):
    """``train ppo``: TL-Training's PPO (value head, GAE, per-token KL control), their defaults."""

    objective: ClassVar[str] = "ppo"

    rl: Annotated[RlConfig, tyro.conf.OmitArgPrefixes] = RlConfig(
        reward="tl", group_size=1, prompts_per_step=8, temperature=0.7, kl_coef=0.4)
