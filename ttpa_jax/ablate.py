"""``python -m ttpa_jax.ablate``: the ablation over systems and seeds; the code is in ``ttpa_jax.ablation``."""

from ttpa_jax.ablation.cli import main
from ttpa_jax.core.cli import run

if __name__ == "__main__":
    run(main)
