"""``python -m ttpa_jax.serve``: the command line of ``ttpa_jax.serve.server``."""

from ttpa_jax.core.cli import run
from ttpa_jax.serve.server import main

if __name__ == "__main__":
    run(main)
