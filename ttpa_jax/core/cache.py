"""Where ttpa-jax keeps what it can rebuild: base models converted from GGUF (``model.base_models``) and
XLA's compiled programs. ``$TTPA_CACHE``, else ``~/.cache/ttpa-jax``.

``use_compile_cache()`` (every command line calls it, ``core.cli.run``) turns on JAX's persistent
compilation cache in ``<cache>/xla``: a program compiled once is read back by every later process
that compiles it with the same shapes (the ablation's runs, a resumed run, the next demo). On a GPU
or TPU that skips the compile; on XLA:CPU loading a cached executable still costs most of one
(docs/benchmarks.md). The directory is an LRU cache capped at ``COMPILE_CACHE_BYTES``. The user's
own ``JAX_COMPILATION_CACHE_DIR`` / ``JAX_COMPILATION_CACHE_MAX_SIZE`` win; ``TTPA_COMPILE_CACHE=0``
turns it off. Pure Python: JAX reads these settings when it compiles.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

COMPILE_CACHE_BYTES = 4 << 30


def cache_root() -> Path:
    return Path(os.environ.get("TTPA_CACHE") or Path.home() / ".cache" / "ttpa-jax")


def use_compile_cache() -> None:
    """Point JAX's persistent compilation cache at ``<cache>/xla`` unless the user chose otherwise."""
    if os.environ.get("TTPA_COMPILE_CACHE", "1") == "0":
        return
    settings = {"jax_compilation_cache_dir": str(cache_root() / "xla"),
                "jax_compilation_cache_max_size": str(COMPILE_CACHE_BYTES)}
    for name, value in settings.items():
        os.environ.setdefault(name.upper(), value)
    jax = sys.modules.get("jax")  # a stage module that already imported JAX read the environment before this
    if jax is not None and hasattr(jax, "config"):
        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_compilation_cache_max_size", int(os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"]))
