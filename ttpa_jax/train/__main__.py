"""``python -m ttpa_jax.train``: the command line of ``ttpa_jax.train.cli``."""

from ttpa_jax.core.cli import run
from ttpa_jax.train.cli import main

if __name__ == "__main__":
    run(main)
