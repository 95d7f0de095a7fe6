"""The ablation: which method does what to a real model, over systems and seeds (``python -m ttpa_jax.ablate``)."""
