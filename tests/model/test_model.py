"""The NNX decoder against transformers' PyTorch models, and the HF checkpoint round trip."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from helpers import left_padded_batch, tiny_hf_model, torch_logits
from transformers import AutoConfig, AutoModelForCausalLM

import ttpa_jax
from ttpa_jax.model.config import ConfigError, list_presets, load_config
from ttpa_jax.model.hf_io import CheckpointError
from ttpa_jax.model.transformer import CacheSlot, Visibility, abstract_model, count_params, rotary


def _compare(hf_model, tmp_path, lengths, atol=1e-4, **load_kw):
    hf_model.save_pretrained(tmp_path)
    model = ttpa_jax.load_pretrained(tmp_path, **load_kw)
    ids, mask = left_padded_batch(hf_model.config.vocab_size, lengths)
    ref = torch_logits(hf_model, ids, mask)
    out = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    assert out.dtype == np.float32 and out.shape == ref.shape
    real = mask.astype(bool)
    np.testing.assert_allclose(out[real], ref[real], atol=atol, rtol=0)
    return model, ids, mask


@pytest.mark.parametrize("tie", [False, True])
def test_qwen2_logits_match_transformers(tmp_path, tie):
    _compare(tiny_hf_model("qwen2", tie=tie), tmp_path, [12, 7, 3])


@pytest.mark.parametrize("tie", [False, True])
def test_llama3_rope_scaling_beyond_original_context(tmp_path, tie):
    # original_max_position_embeddings is 16; 40 tokens exercise the scaled low frequencies.
    hf = tiny_hf_model("llama", tie=tie)
    assert hf.config.num_attention_heads // hf.config.num_key_value_heads == 4  # GQA ratio above 2
    _compare(hf, tmp_path, [40, 33, 5])


def test_llama_attention_and_mlp_bias(tmp_path):
    _compare(tiny_hf_model("llama", attention_bias=True, mlp_bias=True, head_dim=16), tmp_path, [9, 4])


def test_old_style_rope_config_is_read(tmp_path):
    hf = tiny_hf_model("llama")
    hf.save_pretrained(tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    rp = d.pop("rope_parameters")
    d["rope_theta"] = rp.pop("rope_theta")
    d["rope_scaling"] = rp
    (tmp_path / "config.json").write_text(json.dumps(d))
    cfg = load_config(tmp_path)
    assert cfg.rope_theta == 500000.0 and cfg.rope_scaling_dict["factor"] == 8.0
    model = ttpa_jax.load_pretrained(tmp_path)
    ids, mask = left_padded_batch(96, [30])
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids), jnp.asarray(mask))), torch_logits(hf, ids, mask), atol=1e-4)


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_round_trip_through_transformers(tmp_path, family):
    hf = tiny_hf_model(family, tie=family == "llama")
    model, ids, mask = _compare(hf, tmp_path / "src", [10, 6])
    out_dir = ttpa_jax.save_pretrained(model, tmp_path / "exported")
    for f in ("config.json", "generation_config.json", "model.safetensors"):
        assert (out_dir / f).is_file()
    back = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    real = mask.astype(bool)
    np.testing.assert_allclose(torch_logits(back, ids, mask)[real], ours[real], atol=1e-5, rtol=0)
    again = ttpa_jax.load_pretrained(out_dir)
    np.testing.assert_array_equal(np.asarray(again(jnp.asarray(ids), jnp.asarray(mask))), ours)


def test_bf16_checkpoint_loads(tmp_path):
    hf = tiny_hf_model("qwen2").to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    model = ttpa_jax.load_pretrained(tmp_path)
    assert model.param_dtype == jnp.bfloat16 and model.embed_tokens.weight[...].dtype == jnp.bfloat16
    # Upcast to fp32 on load: exactly the bf16 values, compared against the fp32 torch model.
    model32 = ttpa_jax.load_pretrained(tmp_path, dtype=jnp.float32)
    ids, mask = left_padded_batch(96, [8, 5])
    ref = torch_logits(hf.float(), ids, mask)
    np.testing.assert_allclose(np.asarray(model32(jnp.asarray(ids), jnp.asarray(mask)))[mask == 1], ref[mask == 1], atol=1e-4)
    out_bf16 = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    assert out_bf16.dtype == np.float32
    assert np.abs(out_bf16 - ref)[mask == 1].max() < 0.1


def test_sharded_checkpoint_loads_and_sharded_export(tmp_path):
    hf = tiny_hf_model("llama")
    hf.save_pretrained(tmp_path / "src", max_shard_size="40KB")
    assert (tmp_path / "src" / "model.safetensors.index.json").is_file()
    model, ids, mask = _compare(hf, tmp_path / "src2", [6])  # single file, for reference
    sharded = ttpa_jax.load_pretrained(tmp_path / "src")
    np.testing.assert_array_equal(np.asarray(sharded(jnp.asarray(ids), jnp.asarray(mask))),
                                  np.asarray(model(jnp.asarray(ids), jnp.asarray(mask))))
    out = ttpa_jax.save_pretrained(sharded, tmp_path / "out", max_shard_bytes=50_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    back = AutoModelForCausalLM.from_pretrained(out).eval()
    np.testing.assert_allclose(torch_logits(back, ids, mask), torch_logits(hf, ids, mask), atol=1e-6)


def test_bf16_compute_and_remat_run(tmp_path):
    hf = tiny_hf_model("qwen2")
    model, ids, mask = _compare(hf, tmp_path, [7, 7])
    remat = ttpa_jax.load_pretrained(tmp_path, remat=True)
    np.testing.assert_allclose(np.asarray(remat(jnp.asarray(ids), jnp.asarray(mask))),
                               np.asarray(model(jnp.asarray(ids), jnp.asarray(mask))), atol=1e-6)
    bf16 = ttpa_jax.load_pretrained(tmp_path, dtype=jnp.float32, compute_dtype=jnp.bfloat16)
    out = np.asarray(bf16(jnp.asarray(ids), jnp.asarray(mask)))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert np.abs(out - torch_logits(hf, ids, mask)).max() < 0.1


def test_rotary_table_equals_the_formula_and_compiles_to_no_trigonometry():
    model = ttpa_jax.init_model("tiny-qwen2", seed=0)
    inv_freq = model.config.inv_freq()
    positions = jnp.asarray([[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3]])
    cos, sin = rotary(positions, inv_freq, 8, jnp.float32)
    angles = np.asarray(positions, np.float32)[..., None] * inv_freq.astype(np.float32)
    angles = np.concatenate([angles, angles], -1)[:, :, None, :]
    np.testing.assert_allclose(np.asarray(cos), np.cos(angles), atol=1e-6)
    np.testing.assert_allclose(np.asarray(sin), np.sin(angles), atol=1e-6)

    graphdef, state = nnx.split(model)

    def loss(st, ids):
        return nnx.merge(graphdef, st)(ids).mean()

    hlo = jax.jit(jax.grad(loss)).lower(state, jnp.ones((2, 16), jnp.int32)).compile().as_text()
    assert "cosine(" not in hlo and "sine(" not in hlo  # read from the table, never recomputed per layer


@pytest.mark.parametrize("preset", list_presets())
def test_preset_parameter_count_matches_transformers(preset):
    cfg = load_config(preset)
    hf_cfg = AutoConfig.for_model(**cfg.to_hf_dict())
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(hf_cfg)
    assert count_params(abstract_model(cfg)) == sum(p.numel() for p in hf.parameters())


def test_init_model_from_preset():
    model = ttpa_jax.init_model("tiny-qwen2", seed=3)
    logits = model(jnp.ones((1, 5), jnp.int32))
    chex.assert_shape(logits, (1, 5, model.config.vocab_size))


# ------------------------------------------------------------------ corrupt inputs
def test_missing_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_hf_model("qwen2").save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing tensor model\.layers\.1\.mlp\.up_proj\.weight"):
        ttpa_jax.load_pretrained(tmp_path)


def test_unexpected_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_hf_model("qwen2").save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["model.layers.7.extra.weight"] = torch.zeros(3)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"unexpected tensor model\.layers\.7\.extra\.weight"):
        ttpa_jax.load_pretrained(tmp_path)


def test_wrong_shape_is_named(tmp_path):
    tiny_hf_model("qwen2").save_pretrained(tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    d["intermediate_size"] = 128
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=r"mlp\.(down|gate|up)_proj\.weight has shape \[.*\], the config expects"):
        ttpa_jax.load_pretrained(tmp_path)


def test_unknown_model_type(tmp_path):
    tiny_hf_model("qwen2").save_pretrained(tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    d["model_type"] = "gpt_neox"
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=r"model_type 'gpt_neox' is not supported"):
        ttpa_jax.load_pretrained(tmp_path)


def test_missing_config_json(tmp_path):
    tiny_hf_model("qwen2").save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"missing config\.json"):
        ttpa_jax.load_pretrained(tmp_path)


def test_pickle_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(load_config("tiny-qwen2").to_hf_dict()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match=r"pickle checkpoints are not loaded"):
        ttpa_jax.load_pretrained(tmp_path)


def _set_block(model, block):
    for layer in model.layers:
        layer.self_attn.block = block


def test_blocked_attention_equals_dense_in_values_and_gradients(tmp_path):
    """Query blocks of 8 rows (causal key skipping, backward recomputed) on 40-token rows against the
    dense [B, K, G, T, S] scores and against transformers."""
    import jax
    from flax import nnx

    hf = tiny_hf_model("llama")
    model, ids, mask = _compare(hf, tmp_path, [40, 33, 5])
    ref = torch_logits(hf, ids, mask)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    real = np.asarray(mask).astype(bool)
    w = jnp.asarray(np.random.RandomState(1).standard_normal((hf.config.vocab_size,)), jnp.float32)

    def loss(m):  # a scalar of every real position's logits
        return ((m(ids, mask) * w).sum(-1) * mask).sum()

    results = {}
    for block in (0, 8):
        _set_block(model, block)
        logits = np.asarray(model(ids, mask))
        grads = nnx.grad(loss)(model)
        results[block] = (logits, jax.tree.leaves(nnx.state(grads, nnx.Param)))
    np.testing.assert_allclose(results[8][0][real], ref[real], atol=1e-4, rtol=0)
    np.testing.assert_allclose(results[8][0][real], results[0][0][real], atol=1e-5, rtol=0)
    for g8, g0 in zip(results[8][1], results[0][1]):  # to 1e-5 of each gradient's largest entry (fp32 sums)
        g8, g0 = np.asarray(g8), np.asarray(g0)
        np.testing.assert_allclose(g8, g0, atol=1e-5 * np.abs(g0).max(), rtol=0)


def test_segment_and_branch_masks():
    from ttpa_jax.model.attention import attention_mask

    seg = jnp.asarray([[1, 1, 2, 2, 0]])
    m = np.asarray(attention_mask(jnp.arange(5)[None], jnp.asarray([[1, 1, 1, 1, 0]]), 5, segment_ids=seg))[0]
    assert m[3].tolist() == [False, False, True, True, False]  # record 2 never sees record 1
    assert m[1].tolist() == [True, True, False, False, False]
    br = jnp.asarray([[0, 0, 1, 1, 2]])
    m = np.asarray(attention_mask(jnp.arange(5)[None], jnp.ones((1, 5)), 5, branch_ids=br))[0]
    assert m[4].tolist() == [True, True, False, False, True]  # a rejected token: trunk and itself
    assert m[3].tolist() == [True, True, True, True, False]


def test_visibility_takes_whole_row_fields_or_a_cache_slot_not_both():
    pos, mask = jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32)
    slot = CacheSlot([], jnp.zeros((1,), jnp.int32))
    for field in ("segment_ids", "branch_ids", "columns"):
        with pytest.raises(ValueError, match=field):
            Visibility(pos, mask, slot=slot, **{field: pos})
    view = Visibility(pos, mask, segment_ids=pos, columns=pos[:, :2])
    leaves, tree = jax.tree.flatten(view)  # absent fields are no leaves
    assert len(leaves) == 4 and jax.tree.unflatten(tree, leaves).columns is leaves[3]
    assert len(jax.tree.leaves(Visibility(pos, mask, slot=slot))) == 3
