"""LoRA adapters: zero-initialised B, the adapters-off switch, targets, and the merge into base weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ttpa_jax
from ttpa_jax.model.lora import LoraConfig, apply_lora, has_lora, iter_linears, merge_lora
from ttpa_jax.model.transformer import Ctx


def test_adapters_start_as_identity_switch_off_and_merge():
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 512, (2, 9)), jnp.int32)
    base_logits = np.asarray(ttpa_jax.init_model("tiny-qwen2", seed=1)(ids))
    model = apply_lora(ttpa_jax.init_model("tiny-qwen2", seed=1), LoraConfig(rank=4, alpha=8, targets=("q_proj", "down_proj")))
    assert has_lora(model)
    np.testing.assert_array_equal(np.asarray(model(ids)), base_logits)  # B = 0: nothing changes yet
    adapted = {name for name, lin in iter_linears(model) if lin.lora_a is not None}
    assert adapted == {f"layers.{i}.{g}.{p}" for i in range(2) for g, p in (("self_attn", "q_proj"), ("mlp", "down_proj"))}
    for i, (_, lin) in enumerate(iter_linears(model)):
        if lin.lora_b is not None:
            lin.lora_b[...] = 0.05 * jax.random.normal(jax.random.key(i), lin.lora_b.shape)
    with_adapters = np.asarray(model(ids))
    assert np.abs(with_adapters - base_logits).max() > 1e-3
    np.testing.assert_array_equal(np.asarray(model(ids, ctx=Ctx(lora=False))), base_logits)  # the reference
    merge_lora(model)
    assert not has_lora(model)
    np.testing.assert_allclose(np.asarray(model(ids)), with_adapters, atol=1e-5)


def test_unknown_target_is_named():
    with pytest.raises(ValueError, match=r"lora\.targets: unknown projection\(s\) \['qkv'\]"):
        apply_lora(ttpa_jax.init_model("tiny-qwen2"), LoraConfig(rank=2, targets=("q_proj", "qkv")))


def test_rank_zero_is_full_finetuning():
    model = apply_lora(ttpa_jax.init_model("tiny-qwen2"), LoraConfig(rank=0))
    assert not has_lora(model)
