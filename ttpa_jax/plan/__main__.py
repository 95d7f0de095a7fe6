"""``python -m ttpa_jax.plan``: runs ``ttpa_jax.plan.memory``."""

import runpy

runpy.run_module("ttpa_jax.plan.memory", run_name="__main__", alter_sys=True)
