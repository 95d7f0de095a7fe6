"""Stage 4, ``python -m ttpa_jax.evaluate``: fine-grained tool-use metrics on a test set or BFCL, and run reports."""
