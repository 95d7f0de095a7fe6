"""``python -m ttpa_jax.generate``: decode completions for a JSONL file of prompts; the code is in ``ttpa_jax.decode.generate``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("ttpa_jax.decode.generate", run_name="__main__", alter_sys=True)
