"""``train grpo`` and ``train ppo``: multi-turn rollouts with tools that run, error-oriented rewards,
GRPO's and PPO's updates (``config``: their settings, JAX-free; ``grpo``, ``ppo``: the units)."""
