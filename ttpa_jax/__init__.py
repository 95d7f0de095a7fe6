"""ttpa-jax: Token-level Tool-use Preference Alignment for open LLMs, in JAX.

The public model API is imported lazily so that light modules (scoring, tool calls, data
construction) can be used without initialising JAX.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_pretrained": "ttpa_jax.model.hf_io",
    "save_pretrained": "ttpa_jax.model.hf_io",
    "init_model": "ttpa_jax.model.transformer",
    "ModelConfig": "ttpa_jax.model.config",
    "Transformer": "ttpa_jax.model.transformer",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ttpa_jax' has no attribute {name!r}")
