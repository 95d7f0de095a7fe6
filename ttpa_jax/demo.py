"""``python -m ttpa_jax.demo``: the end-to-end demo (``make demo``); the code is in ``ttpa_jax.experiments.demo``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("ttpa_jax.experiments.demo", run_name="__main__", alter_sys=True)
