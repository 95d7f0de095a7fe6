"""``python -m ttpa_jax.export``: runs ``ttpa_jax.export.exporter``."""

import runpy

runpy.run_module("ttpa_jax.export.exporter", run_name="__main__", alter_sys=True)
