"""``python -m ttpa_jax.ablate``: the ablation over systems and seeds; the code is in ``ttpa_jax.experiments.ablate``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("ttpa_jax.experiments.ablate", run_name="__main__", alter_sys=True)
