"""Stage 1, ``python -m ttpa_jax.construct``: reversed (and forward) dataset construction with generators, the simulated toolbox and record checks. Pure Python, no JAX."""
