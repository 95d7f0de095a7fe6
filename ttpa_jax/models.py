"""``python -m ttpa_jax.models``: list the architecture presets; the code is in ``ttpa_jax.model.presets``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("ttpa_jax.model.presets", run_name="__main__", alter_sys=True)
