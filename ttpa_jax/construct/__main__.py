"""``python -m ttpa_jax.construct``: the command line of ``ttpa_jax.construct.build``."""

from ttpa_jax.construct.build import main
from ttpa_jax.core.cli import run

if __name__ == "__main__":
    run(main)
