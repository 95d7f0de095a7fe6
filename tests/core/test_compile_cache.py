"""core/cache.py: every command line keeps XLA's compiled programs in ``<cache>/xla`` (``$TTPA_CACHE``),
the user's own JAX settings win, ``TTPA_COMPILE_CACHE=0`` turns it off, and a stage that imported JAX
before the command line ran gets the setting too. Each check runs in a fresh interpreter: JAX reads
its settings once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import sft_records, write_jsonl

SHOW = ("import json, sys\n{pre}from ttpa_jax.core.cache import use_compile_cache\nuse_compile_cache()\nimport jax\n"
        "print(json.dumps([jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size]))")


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "TTPA_COMPILE"))}
    return {**env, "TTPA_CACHE": str(tmp_path / "cache"), **extra}


def _settings(tmp_path, pre="", **extra):
    out = subprocess.run([sys.executable, "-c", SHOW.format(pre=pre)], env=_env(tmp_path, **extra),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_defaults_the_users_choice_and_off(tmp_path):
    from ttpa_jax.core.cache import COMPILE_CACHE_BYTES

    xla = str(tmp_path / "cache" / "xla")
    assert _settings(tmp_path) == [xla, COMPILE_CACHE_BYTES]
    assert _settings(tmp_path, pre="import jax\n") == [xla, COMPILE_CACHE_BYTES]  # JAX loaded first
    mine = str(tmp_path / "mine")
    assert _settings(tmp_path, JAX_COMPILATION_CACHE_DIR=mine, JAX_COMPILATION_CACHE_MAX_SIZE="7") == [mine, 7]
    assert _settings(tmp_path, TTPA_COMPILE_CACHE="0")[0] in (None, "")


def test_a_training_run_fills_the_cache(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(4))
    cmd = [sys.executable, "-m", "ttpa_jax.train", "sft", "--model", str(tiny_model_dir), "--data", str(data),
           "--out", str(tmp_path / "run"), "--steps", "1", "--dataset.batch-size", "2", "--mesh.fsdp", "1",
           "--no-progress"]
    subprocess.run(cmd, env=_env(tmp_path, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"), check=True,
                   capture_output=True, text=True)
    entries = list((tmp_path / "cache" / "xla").iterdir())
    assert any(p.stat().st_size > 10_000 for p in entries), entries  # the train step's executable, at least
