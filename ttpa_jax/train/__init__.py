"""Stage 3, ``python -m ttpa_jax.train sft|dpo|orpo|grpo|ppo``: one unit per method (``sft``, ``dpo``,
``orpo``, ``rl``; registered in ``methods``), typed batches, scoring, the one loop, checkpoints."""
