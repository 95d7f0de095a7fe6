"""``python -m ttpa_jax.sample``: the command line of ``ttpa_jax.sample.sampler``."""

from ttpa_jax.core.cli import run
from ttpa_jax.sample.sampler import main

if __name__ == "__main__":
    run(main)
