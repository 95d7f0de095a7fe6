"""``python -m ttpa_jax.export``: the command line of ``ttpa_jax.export.exporter``."""

from ttpa_jax.export.exporter import main
from ttpa_jax.core.cli import run

if __name__ == "__main__":
    run(main)
