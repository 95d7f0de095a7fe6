"""``python -m ttpa_jax.evaluate``: the command line of ``ttpa_jax.evaluate.evaluator``."""

from ttpa_jax.core.cli import run
from ttpa_jax.evaluate.evaluator import main

if __name__ == "__main__":
    run(main)
