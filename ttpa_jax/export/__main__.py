"""``python -m ttpa_jax.export``: the command line of ``ttpa_jax.export.exporter``."""

from ttpa_jax.core.cli import run
from ttpa_jax.export.exporter import main

if __name__ == "__main__":
    run(main)
