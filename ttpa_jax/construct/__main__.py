"""``python -m ttpa_jax.construct``: runs ``ttpa_jax.construct.build``."""

import runpy

runpy.run_module("ttpa_jax.construct.build", run_name="__main__", alter_sys=True)
