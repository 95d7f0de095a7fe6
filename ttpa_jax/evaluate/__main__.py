"""``python -m ttpa_jax.evaluate``: runs ``ttpa_jax.evaluate.evaluator``."""

import runpy

runpy.run_module("ttpa_jax.evaluate.evaluator", run_name="__main__", alter_sys=True)
