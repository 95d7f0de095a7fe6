"""``python -m ttpa_jax.validate``: check constructed SFT records; the code is in ``ttpa_jax.construct.checks``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("ttpa_jax.construct.checks", run_name="__main__", alter_sys=True)
