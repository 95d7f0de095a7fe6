"""Stage 2, ``python -m ttpa_jax.sample``: TPS candidates scored by ESM into preference pairs."""
