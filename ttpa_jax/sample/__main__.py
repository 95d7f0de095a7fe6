"""``python -m ttpa_jax.sample``: runs ``ttpa_jax.sample.sampler``."""

import runpy

runpy.run_module("ttpa_jax.sample.sampler", run_name="__main__", alter_sys=True)
