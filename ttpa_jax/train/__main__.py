"""``python -m ttpa_jax.train``: runs ``ttpa_jax.train.cli``."""

import runpy

runpy.run_module("ttpa_jax.train.cli", run_name="__main__", alter_sys=True)
