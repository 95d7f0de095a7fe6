"""``python -m ttpa_jax.validate``: check constructed SFT records; the code is in ``ttpa_jax.construct.validate``."""

from ttpa_jax.construct.validate import main
from ttpa_jax.core.cli import run

if __name__ == "__main__":
    run(main)
