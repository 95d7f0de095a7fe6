"""``python -m ttpa_jax.models``: list the architecture presets; the code is in ``ttpa_jax.model.presets``."""

from ttpa_jax.core.cli import run
from ttpa_jax.model.presets import main

if __name__ == "__main__":
    run(main)
