"""Stage 3, ``python -m ttpa_jax.train sft|dpo``: settings, objectives, token weights, optimizer, datasets, the trainer, checkpoints."""
