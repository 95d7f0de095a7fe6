"""``python -m ttpa_jax.demo``: the end-to-end demo (``make demo``); the code is in ``ttpa_jax.experiments.demo``."""

from ttpa_jax.core.cli import run
from ttpa_jax.experiments.demo import main

if __name__ == "__main__":
    run(main)
