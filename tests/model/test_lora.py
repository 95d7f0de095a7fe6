"""LoRA adapters: zero-initialised B, the adapters-off switch, targets, and the merge into base weights."""

import chex
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
    for _, lin in iter_linears(model):
        if lin.lora_a is not None:
            d_out, d_in = lin.weight.shape
            chex.assert_shape(lin.lora_a[...], (4, d_in))  # A [r, in]
            chex.assert_shape(lin.lora_b[...], (d_out, 4))  # B [out, r], zeros
            chex.assert_trees_all_equal(lin.lora_b[...], jnp.zeros((d_out, 4), jnp.float32))
    untouched = {name: lin.weight[...] for name, lin in iter_linears(model) if lin.lora_a is None}
    for i, (_, lin) in enumerate(iter_linears(model)):
        if lin.lora_b is not None:
            lin.lora_b[...] = 0.05 * jax.random.normal(jax.random.key(i), lin.lora_b.shape)
    with_adapters = np.asarray(model(ids))
    assert np.abs(with_adapters - base_logits).max() > 1e-3
    np.testing.assert_array_equal(np.asarray(model(ids, ctx=Ctx(lora=False))), base_logits)  # the reference
    merge_lora(model)
    assert not has_lora(model)
    merged = np.asarray(model(ids))
    chex.assert_shape(merged, (2, 9, model.config.vocab_size))
    np.testing.assert_allclose(merged, with_adapters, atol=1e-5)
    # Projections without adapters keep their weights bit for bit through the merge.
    chex.assert_trees_all_equal(untouched, {name: lin.weight[...] for name, lin in iter_linears(model) if name in untouched})


def test_unknown_target_is_named():
    with pytest.raises(ValueError, match=r"lora\.targets: unknown projection\(s\) \['qkv'\]"):
        apply_lora(ttpa_jax.init_model("tiny-qwen2"), LoraConfig(rank=2, targets=("q_proj", "qkv")))


def test_rank_zero_is_full_finetuning():
    model = apply_lora(ttpa_jax.init_model("tiny-qwen2"), LoraConfig(rank=0))
    assert not has_lora(model)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_lora_up_gradients_equal_autodiff(dtype):
    """``lora_up``'s hand-written backward (B's gradient computed transposed) gives autodiff's gradients."""
    from ttpa_jax.model.transformer import lora_up

    rng = np.random.default_rng(0)
    h, b, ct = (jnp.asarray(rng.standard_normal(s), dtype) for s in ((37, 4), (23, 4), (37, 23)))

    def loss(f):
        return lambda h, b: jnp.sum((f(h, b) * ct).astype(jnp.float32))

    ours = jax.grad(loss(lora_up), (0, 1))(h, b)
    plain = jax.grad(loss(lambda h, b: h @ b.T), (0, 1))(h, b)
    np.testing.assert_array_equal(np.asarray(lora_up(h, b), np.float32), np.asarray(h @ b.T, np.float32))
    for g0, g1 in zip(plain, ours):
        assert g1.dtype == g0.dtype and g1.shape == g0.shape
        np.testing.assert_allclose(np.asarray(g1, np.float32), np.asarray(g0, np.float32),
                                   atol=1e-5 if dtype == jnp.float32 else 5e-2, rtol=0)
