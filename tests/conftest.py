"""Test set-up: CPU only, 8 fake devices available for sharding tests, fp32 matmuls exact enough to
compare against PyTorch."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Compiled programs are cached on disk and shared with the subprocesses tests start (same step
# compiled once per session instead of once per process).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "ttpa-jax-test-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import json  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Qwen2 HF directory (tokenizer + tool chat template + random weights), built once."""
    from helpers import preference_records, sft_records

    from ttpa_jax.model.tiny import build_model_dir

    d = tmp_path_factory.mktemp("tiny-model")
    texts = [json.dumps(r) for r in sft_records(60)] + [json.dumps(r) for r in preference_records(20)]
    return build_model_dir(d, texts, preset="tiny-qwen2", seed=0)
