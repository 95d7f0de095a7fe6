"""``python -m ttpa_jax.plan``: per-device memory of a training run before starting it."""
