"""GGUF export against an independent reader: transformers' GGUF loader reads our file (llama and qwen2)
and gives the merged checkpoint's logits (f32 to rounding, q8_0 to its quantisation error) and the
same tokenization and chat template; our own GGUF import reads it back, Llama 3 RoPE scaling included."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from helpers import LLAMA3_SCALING, TOOLS, sft_records, tiny_hf_model, torch_logits
from transformers import AutoModelForCausalLM, AutoTokenizer

from ttpa_jax.export.exporter import main as export_main
from ttpa_jax.export.to_gguf import gguf_tensor_name, permute_rows, write_gguf
from ttpa_jax.model.gguf import convert_gguf, hf_tensor_name, unpermute_rows

VOCAB = 384


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def merged(request, tmp_path_factory):
    """(arch, HF directory, the transformers model): a tiny random checkpoint with a trained byte-level
    BPE tokenizer and the package's tool-aware chat template (llama: tied embeddings, no biases; qwen2:
    q/k/v biases, untied)."""
    from ttpa_jax.model.tiny import train_tokenizer

    arch = request.param
    d = tmp_path_factory.mktemp(arch)
    extra = dict(tie=True, rope_scaling=None, rope_theta=10000.0) if arch == "llama" else {}
    hf = tiny_hf_model(arch, vocab_size=VOCAB, **extra)
    hf.save_pretrained(d)
    train_tokenizer([json.dumps(r) for r in sft_records(40)], VOCAB - 20, d)  # fewer entries than rows: padded
    return arch, d, hf


def _sample_text(tok) -> str:
    text = tok.apply_chat_template([{"role": "user", "content": "Weather in Paris, 100 km? ünïcode"}], tools=TOOLS,
                                   tokenize=False, add_generation_prompt=True)
    return text + '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'


def _load(path):
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def test_f32_export_read_by_transformers_gives_the_same_logits_and_tokens(merged, tmp_path):
    arch, d, hf = merged
    path = write_gguf(d, tmp_path / "m.gguf", "f32")
    model, gguf_tok = _load(path)
    ours = AutoTokenizer.from_pretrained(str(d))
    text = _sample_text(ours)
    ids = ours(text, add_special_tokens=False)["input_ids"]
    assert gguf_tok(text, add_special_tokens=False)["input_ids"] == ids
    assert gguf_tok.chat_template == ours.chat_template and "<tool_call>" in gguf_tok.chat_template
    assert gguf_tok.eos_token == "<|im_end|>" and model.config.tie_word_embeddings == (arch == "llama")
    batch = np.asarray([ids[:96]])
    ref, got = torch_logits(hf, batch, np.ones_like(batch)), torch_logits(model, batch, np.ones_like(batch))
    assert np.abs(got - ref).max() <= 2e-3 * np.abs(ref).max()
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()  # f32: to rounding
    meta = gguf.GGUFReader(str(path)).fields
    assert meta["general.architecture"].contents() == arch and meta["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert len(meta["tokenizer.ggml.tokens"].contents()) == VOCAB


def test_q8_0_export_is_the_merged_model_within_its_quantisation(merged, tmp_path):
    """transformers reads the q8_0 file as the merged model with each 2-D weight rounded through Q8_0."""
    arch, d, hf = merged
    model, _ = _load(write_gguf(d, tmp_path / "q.gguf", "q8_0"))
    rounded = tiny_hf_model(arch, vocab_size=VOCAB, **({"tie": True, "rope_scaling": None, "rope_theta": 10000.0}
                                                         if arch == "llama" else {}))
    q = gguf.GGMLQuantizationType.Q8_0
    with torch.no_grad():
        for name, p in rounded.named_parameters():
            w = hf.state_dict()[name].numpy()
            if w.ndim == 2:
                w = gguf.quants.dequantize(gguf.quants.quantize(w, q), q).reshape(w.shape)
            p.copy_(torch.tensor(w))
    batch = np.random.default_rng(0).integers(0, VOCAB - 20, (2, 40))
    mask = np.ones_like(batch)
    got, want, exact = (torch_logits(m, batch, mask) for m in (model, rounded, hf))
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert np.abs(got - exact).max() <= 5e-2 * np.abs(exact).max()


def test_our_import_reads_the_export_back_llama3_scaling_included(tmp_path):
    import jax.numpy as jnp

    import ttpa_jax
    from ttpa_jax.model.tiny import train_tokenizer

    meta_scaling = {**LLAMA3_SCALING, "original_max_position_embeddings": 8192}  # what llama.cpp's freqs keep
    hf = tiny_hf_model("llama", vocab_size=VOCAB, rope_scaling=meta_scaling, attention_bias=True)
    hf.save_pretrained(tmp_path / "hf")
    train_tokenizer([json.dumps(r) for r in sft_records(40)], VOCAB, tmp_path / "hf")
    assert export_main(["--model", str(tmp_path / "hf"), "--out", str(tmp_path / "m.gguf"), "--format", "gguf",
                        "--gguf-type", "f32"]) == 0
    back = convert_gguf(tmp_path / "m.gguf", tmp_path / "back")
    cfg = json.loads((back / "config.json").read_text())
    assert cfg["rope_parameters"]["rope_type"] == "llama3" and cfg["rope_parameters"]["factor"] == 8.0
    model = ttpa_jax.load_pretrained(back)
    batch = np.random.default_rng(1).integers(0, VOCAB, (2, 24))
    got = np.asarray(model(jnp.asarray(batch), jnp.ones(batch.shape, bool)))
    ref = torch_logits(hf, batch, np.ones_like(batch))
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max())


def test_names_and_permutation_invert_the_importers():
    w = np.random.default_rng(0).normal(size=(4 * 8, 6)).astype(np.float32)
    np.testing.assert_array_equal(unpermute_rows(permute_rows(w, 4), 4), w)
    for name in ("model.layers.3.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.bias",
                 "model.layers.1.mlp.down_proj.weight", "model.embed_tokens.weight", "lm_head.weight",
                 "model.norm.weight", "model.layers.2.post_attention_layernorm.weight"):
        assert hf_tensor_name(gguf_tensor_name(name), "x") == name


def test_export_command_line_errors_exit_2(merged, tmp_path, capsys):
    _, d, _ = merged
    for argv in (["--model", str(d), "--out", str(tmp_path / "x")],  # --model without --format gguf
                 ["--model", str(d), "--out", str(tmp_path / "x"), "--format", "gguf"],  # not a .gguf name
                 ["--out", str(tmp_path / "x.gguf"), "--format", "gguf"]):  # neither --run nor --model
        with pytest.raises(SystemExit) as e:
            export_main(argv)
        assert e.value.code == 2
    assert export_main(["--model", str(tmp_path / "nope"), "--out", str(tmp_path / "x.gguf"), "--format", "gguf"]) == 2
    assert "error:" in capsys.readouterr().err
