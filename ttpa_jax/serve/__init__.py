"""Stage 6, ``python -m ttpa_jax.serve``: an OpenAI-compatible chat-completions server on our decoder."""
