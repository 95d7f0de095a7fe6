"""Stage 5, ``python -m ttpa_jax.export``: a training run to merged Hugging Face weights or a PEFT adapter."""
