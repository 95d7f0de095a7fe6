"""A Hugging Face model directory -> one GGUF file in llama.cpp's layout (numpy and ``gguf``; no JAX).

``write_gguf(model_dir, out, gguf_type)`` writes, for a ``llama`` or ``qwen2`` checkpoint:

- the weights under llama.cpp's tensor names (the inverse of ``model.gguf``'s tables), the q/k
  projections of Llama permuted back into llama.cpp's interleaved rotary layout (``permute_rows``, the
  inverse of ``model.gguf.unpermute_rows``), Llama 3's RoPE scaling as ``rope_freqs.weight``;
- as ``f32``, ``f16``, ``bf16`` or ``q8_0`` (``GGUF_TYPES``): 2-D weights in that type (a ``q8_0``
  row whose length is not a multiple of 32 falls back to f16), norms and biases always f32, as
  llama.cpp's converter does;
- the hyperparameters under ``<arch>.*``, and the tokenizer: vocabulary padded to the model's rows with
  ``[PAD<i>]`` (type unused), token types (control for special added tokens, user-defined for the
  others, like ``<tool_call>``), merges, the pre-tokenizer name, special token ids and the model's own
  chat template (ours renders tools) as ``tokenizer.chat_template``.

Weights are read straight from the safetensors files (fp32, fp16 or bf16). The file is written to a
temporary name and renamed into place. A checkpoint this cannot represent raises ``ExportError``.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import gguf
import numpy as np

from ttpa_jax.core.errors import UserError
from ttpa_jax.model.config import load_config
from ttpa_jax.model.gguf import _LAYER_NAMES, _TOP_NAMES, SUPPORTED_ARCHS, unpermute_rows

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
Q = gguf.GGMLQuantizationType
_QTYPE = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}
_FILE_TYPE = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
_HF_LAYER = {hf: g for g, hf in _LAYER_NAMES.items()}  # "self_attn.q_proj" -> "attn_q"
_HF_TOP = {hf: g for g, hf in _TOP_NAMES.items()}  # "model.embed_tokens" -> "token_embd"
_SAFETENSORS_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": "bfloat16"}
# tokenizer.json pre-tokenizer split regex -> llama.cpp's name for it (transformers' GGUF reader maps back)
_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_USER, _TOKEN_UNUSED = 1, 3, 4, 5


class ExportError(UserError):
    """A checkpoint that cannot be written as GGUF; the message names the directory and the reason."""


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order: each head's two rotary halves interleaved (rows ``[h, 2, d/2] ->
    [h, d/2, 2]``). ``w``: ``[n_head * head_dim, ...]``; ``model.gguf.unpermute_rows`` inverts it."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensor_name(hf: str) -> str:
    """HF tensor name -> llama.cpp's (``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight``)."""
    stem, leaf = hf.rsplit(".", 1)
    if stem in _HF_TOP:
        return f"{_HF_TOP[stem]}.{leaf}"
    parts = stem.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _HF_LAYER:
        return f"blk.{parts[2]}.{_HF_LAYER[parts[3]]}.{leaf}"
    raise ExportError(f"tensor {hf} has no llama.cpp counterpart in a llama/qwen2 model")


# --------------------------------------------------------------------------- weights
def read_safetensors(path: Path):
    """(name, array) for every tensor of one safetensors file, memory-mapped; bf16 comes back as
    ``ml_dtypes.bfloat16``."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dt is None:
            raise ExportError(f"{path}: tensor {name} has dtype {info['dtype']} (expected F32, F16 or BF16)")
        if dt == "bfloat16":
            import ml_dtypes  # deferred: slow to import, needed only for bf16 checkpoints

            dt = np.dtype(ml_dtypes.bfloat16)
        start, end = info["data_offsets"]
        yield name, data[start:end].view(dt).reshape(info["shape"])


def hf_tensors(model_dir: Path):
    """(HF name, float32 array) of every weight of the checkpoint, in file order."""
    index = model_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    for fname in files:
        if not (model_dir / fname).is_file():
            raise ExportError(f"{model_dir}: {fname} missing")
        for name, arr in read_safetensors(model_dir / fname):
            if not name.endswith("rotary_emb.inv_freq"):
                yield name, np.asarray(arr, np.float32)


def encode(w: np.ndarray, gguf_type: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """A float32 tensor as stored: (data for ``GGUFWriter.add_tensor``, its GGML type)."""
    qtype = _QTYPE[gguf_type]
    if w.ndim < 2 or qtype == Q.F32:
        return w.astype(np.float32), Q.F32
    if qtype == Q.F16 or (qtype == Q.Q8_0 and w.shape[-1] % 32):
        return w.astype(np.float16), Q.F16
    return gguf.quants.quantize(w, qtype), qtype


def rope_freqs(cfg) -> np.ndarray | None:
    """Llama 3's RoPE scaling as llama.cpp stores it: per-frequency divisors ``[head_dim / 2]``."""
    if cfg.rope_scaling is None:
        return None
    return (cfg.replace(rope_scaling=None).inv_freq() / cfg.inv_freq()).astype(np.float32)


# --------------------------------------------------------------------------- tokenizer
def pre_tokenizer_name(tokenizer_json: dict, model_dir: Path) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer: the source GGUF's (``source.json`` of a base
    converted from one), else the name whose split regex transformers' GGUF reader maps to the one in
    ``tokenizer.json``, ``gpt-2`` for plain byte-level splitting, else ``default``."""
    src = model_dir / "source.json"
    if src.is_file():
        gguf_path = json.loads(src.read_text()).get("gguf")
        if gguf_path and Path(gguf_path).is_file():
            field = gguf.GGUFReader(gguf_path).fields.get("tokenizer.ggml.pre")
            if field is not None:
                return field.contents()
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS  # deferred: slow import

    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre])
    for step in steps:
        regex = (step.get("pattern") or {}).get("Regex") if step.get("type") == "Split" else None
        if regex is not None:
            return next((name for name, r in GGUF_PRE_TOKENIZER_SPLITS.items() if r == regex), "default")
        if step.get("type") == "ByteLevel" and step.get("use_regex", True):
            return "gpt-2"
    return "default"


def tokenizer_fields(model_dir: Path, vocab_size: int) -> dict:
    """The ``tokenizer.*`` metadata of a byte-level BPE ``tokenizer.json`` (+ tokenizer_config.json)."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ExportError(f"{model_dir}: no tokenizer.json (GGUF export needs the fast tokenizer's file)")
    tj = json.loads(path.read_text(encoding="utf-8"))
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise ExportError(f"{path}: tokenizer model {model.get('type')!r}; GGUF export supports byte-level BPE")
    tokens: list[str | None] = [None] * vocab_size
    types = [_TOKEN_UNUSED] * vocab_size
    for tok, i in model["vocab"].items():
        if i < vocab_size:
            tokens[i], types[i] = tok, _TOKEN_NORMAL
    for added in tj.get("added_tokens", []):
        i = added["id"]
        if i >= vocab_size:
            raise ExportError(f"{path}: added token {added['content']!r} has id {i}, beyond the model's {vocab_size} rows")
        tokens[i], types[i] = added["content"], _TOKEN_CONTROL if added.get("special") else _TOKEN_USER
    tokens = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    cfg_path = model_dir / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    ids = {t: i for i, t in enumerate(tokens)}

    def special(key: str) -> int | None:
        value = tok_cfg.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        return ids.get(value) if isinstance(value, str) else None

    template = tok_cfg.get("chat_template")
    if template is None and (model_dir / "chat_template.jinja").is_file():
        template = (model_dir / "chat_template.jinja").read_text()
    return {"tokens": tokens, "types": types, "merges": merges, "pre": pre_tokenizer_name(tj, model_dir),
            "bos": special("bos_token"), "eos": special("eos_token"), "pad": special("pad_token"),
            "unk": special("unk_token"), "add_bos": bool(tok_cfg.get("add_bos_token", False)),
            "chat_template": template}


# --------------------------------------------------------------------------- the file
def _check(cfg, model_dir: Path) -> None:
    if cfg.model_type not in SUPPORTED_ARCHS:
        raise ExportError(f"{model_dir}: model_type {cfg.model_type!r} (GGUF export supports {', '.join(SUPPORTED_ARCHS)})")
    if cfg.mlp_bias or (cfg.model_type == "qwen2" and cfg.o_bias):
        raise ExportError(f"{model_dir}: MLP or output-projection biases have no place in llama.cpp's {cfg.model_type}")


def write_gguf(model_dir: str | os.PathLike, out: str | os.PathLike, gguf_type: str = "f16",
               name: str | None = None) -> Path:
    """Write ``out`` (a ``.gguf`` file) from the HF checkpoint directory ``model_dir``; returns ``out``."""
    model_dir, out = Path(model_dir), Path(out)
    if gguf_type not in GGUF_TYPES:
        raise ExportError(f"--gguf-type {gguf_type!r}: choose one of {', '.join(GGUF_TYPES)}")
    cfg = load_config(model_dir)
    _check(cfg, model_dir)
    tok = tokenizer_fields(model_dir, cfg.vocab_size)
    arch = cfg.model_type
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    w = gguf.GGUFWriter(str(tmp), arch)
    try:
        w.add_name(name or model_dir.name)
        w.add_file_type(_FILE_TYPE[gguf_type])
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_vocab_size(cfg.vocab_size)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(tok["pre"])
        w.add_token_list(tok["tokens"])
        w.add_token_types(tok["types"])
        w.add_token_merges(tok["merges"])
        eos = tok["eos"] if tok["eos"] is not None else (cfg.eos_token_ids or (None,))[0]
        for add, tid in ((w.add_bos_token_id, tok["bos"] if tok["bos"] is not None else cfg.bos_token_id),
                         (w.add_eos_token_id, eos), (w.add_pad_token_id, tok["pad"] if tok["pad"] is not None
                                                     else cfg.pad_token_id), (w.add_unk_token_id, tok["unk"])):
            if tid is not None:
                add(int(tid))
        w.add_add_bos_token(tok["add_bos"])
        if tok["chat_template"]:
            w.add_chat_template(tok["chat_template"])
        freqs = rope_freqs(cfg)
        if freqs is not None:
            w.add_tensor("rope_freqs.weight", freqs)
        for hf, arr in hf_tensors(model_dir):
            if hf == "lm_head.weight" and cfg.tie_word_embeddings:
                continue
            if arch == "llama" and (".q_proj." in hf or ".k_proj." in hf):
                arr = permute_rows(arr, cfg.num_attention_heads if ".q_proj." in hf else cfg.num_key_value_heads)
            data, qtype = encode(arr, gguf_type)
            w.add_tensor(gguf_tensor_name(hf), data, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


__all__ = ["write_gguf", "GGUF_TYPES", "ExportError", "permute_rows", "gguf_tensor_name", "unpermute_rows"]
