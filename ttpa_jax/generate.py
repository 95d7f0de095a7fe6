"""``python -m ttpa_jax.generate``: decode completions for a JSONL file of prompts; the code is in ``ttpa_jax.decode.generate``."""

from ttpa_jax.core.cli import run
from ttpa_jax.decode.generate import main

if __name__ == "__main__":
    run(main)
