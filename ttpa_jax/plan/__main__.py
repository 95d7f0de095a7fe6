"""``python -m ttpa_jax.plan``: the command line of ``ttpa_jax.plan.memory``."""

from ttpa_jax.core.cli import run
from ttpa_jax.plan.memory import main

if __name__ == "__main__":
    run(main)
