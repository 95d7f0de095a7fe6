"""The RL stage: multi-turn rollouts with tools that run, error-oriented rewards, GRPO and PPO."""
