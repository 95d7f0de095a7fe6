"""GGUF (llama.cpp's file format) -> a local Hugging Face checkpoint directory, without torch.

``python -m ttpa_jax.model.gguf FILE.gguf --out DIR [--dtype float32|bfloat16] [--chat-template F]``

Reads a GGUF of architecture ``llama`` or ``qwen2`` with the ``gguf`` package and writes:

- ``config.json`` (and ``generation_config.json``) from the GGUF metadata (``<arch>.block_count``,
  ``<arch>.embedding_length``, ... and the tokenizer's special token ids);
- ``model.safetensors`` (or shards): every tensor dequantized by ``gguf.quants.dequantize`` (each
  quant type the package implements), renamed to HF names, with llama.cpp's row permutation of the
  Llama q/k projections undone; no ``lm_head.weight`` when the file has no ``output.weight`` (tied);
- the tokenizer (``tokenizer.json`` + ``tokenizer_config.json``), rebuilt from the vocabulary and merges
  in the metadata by transformers' GGUF tokenizer conversion, and the chat template
  (``tokenizer.chat_template``, or ``--chat-template``).

The result loads in ``ttpa_jax.load_pretrained`` and in ``transformers.AutoModelForCausalLM``.
A file this cannot convert (other architecture, a quant type ``gguf`` cannot dequantize, a truncated
file) raises ``GGUFError`` naming the file and what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Literal

import gguf
import numpy as np
import tyro
from gguf import quants
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from ttpa_jax.core.errors import UserError
from ttpa_jax.model.architecture import ModelConfig

SUPPORTED_ARCHS = ("llama", "qwen2")
MAX_SHARD_BYTES = 2 * 1024**3

# GGUF tensor name (after "blk.N.") -> HF name (after "model.layers.N.")
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


class GGUFError(UserError):
    """A GGUF file that cannot be converted; the message names the file and the field or tensor."""


# --------------------------------------------------------------------------- reading
def open_gguf(path: str | os.PathLike):
    """``gguf.GGUFReader`` of ``path``, checked to hold every tensor's bytes (a truncated file fails here)."""
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such GGUF file")
    size = path.stat().st_size
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError/IndexError/KeyError on a damaged header
        raise GGUFError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e}); truncated or damaged?") from None
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size or t.data.nbytes < int(t.n_bytes):
            raise GGUFError(f"{path}: tensor {t.name} ends at byte {end} but the file has {size} bytes (truncated file)")
    return reader


def metadata(reader, keys_prefix: tuple[str, ...] = ()) -> dict:
    """Metadata fields as Python values (strings, numbers, lists)."""
    out = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or (keys_prefix and not name.startswith(keys_prefix)):
            continue
        out[name] = field.contents()
    return out


def hf_config(meta: dict, tensor_names: set[str], source: str) -> dict:
    """An HF config.json dict (transformers 5 layout) from GGUF metadata; errors name the field."""
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise GGUFError(f"{source}: general.architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHS)})")

    def need(key):
        if f"{arch}.{key}" not in meta:
            raise GGUFError(f"{source}: missing metadata field {arch}.{key}")
        return meta[f"{arch}.{key}"]

    hidden, n_heads = int(need("embedding_length")), int(need("attention.head_count"))
    n_kv = meta.get(f"{arch}.attention.head_count_kv", n_heads)
    if isinstance(n_kv, list):
        raise GGUFError(f"{source}: {arch}.attention.head_count_kv varies by layer; not supported")
    head_dim = meta.get(f"{arch}.attention.key_length") or meta.get(f"{arch}.rope.dimension_count") or hidden // n_heads
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = meta.get(f"{arch}.vocab_size") or (len(tokens) if tokens else None)
    if vocab is None:
        raise GGUFError(f"{source}: missing metadata field {arch}.vocab_size (and no tokenizer.ggml.tokens)")
    scaling_type = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling_type not in ("none", None):
        raise GGUFError(f"{source}: {arch}.rope.scaling.type {scaling_type!r} is not supported (only plain and llama3 RoPE)")
    default_theta = 1000000.0 if arch == "qwen2" else 10000.0
    eos = meta.get("tokenizer.ggml.eos_token_id")
    cfg = ModelConfig(
        model_type=arch, vocab_size=int(vocab), hidden_size=hidden,
        intermediate_size=int(need("feed_forward_length")), num_hidden_layers=int(need("block_count")),
        num_attention_heads=n_heads, num_key_value_heads=int(n_kv), head_dim=int(head_dim),
        max_position_embeddings=int(meta.get(f"{arch}.context_length", 4096)),
        rms_norm_eps=_f32(need("attention.layer_norm_rms_epsilon")),
        rope_theta=_f32(meta.get(f"{arch}.rope.freq_base", default_theta)),
        tie_word_embeddings="output.weight" not in tensor_names,
        qkv_bias=arch == "qwen2" or "blk.0.attn_q.bias" in tensor_names,
        o_bias=arch == "llama" and "blk.0.attn_q.bias" in tensor_names,
        mlp_bias=False,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=None if eos is None else int(eos),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
    )
    return cfg.to_hf_dict()


def _f32(x) -> float:
    """A float32 metadata value as the decimal it was written from (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(x)))


def llama3_rope_scaling(freqs: np.ndarray, theta: float, head_dim: int, source: str) -> dict:
    """llama.cpp stores Llama 3.1+'s RoPE scaling as per-frequency divisors (``rope_freqs.weight``
    ``[head_dim/2]``). Recover the HF parameters: Meta's low/high factors 1 and 4 and 8192 original
    positions with the largest divisor as ``factor``, checked to reproduce every divisor."""
    rs = {"rope_type": "llama3", "factor": float(freqs.max()), "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}
    base = ModelConfig("llama", 1, head_dim, 1, 1, 1, 1, head_dim, rope_theta=theta)
    plain = base.inv_freq()
    scaled = base.replace(rope_scaling=tuple(sorted(rs.items()))).inv_freq()
    if not np.allclose(plain / scaled, freqs, rtol=1e-3):
        raise GGUFError(f"{source}: rope_freqs.weight is not Llama 3's RoPE scaling with factors 1/4 and 8192 "
                        "original positions; this scaling is not supported")
    return rs


# --------------------------------------------------------------------------- tensors
def hf_tensor_name(name: str, source: str) -> str:
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
    m = re.fullmatch(r"(\w+)\.(weight|bias)", name)
    if m and m.group(1) in _TOP_NAMES:
        return f"{_TOP_NAMES[m.group(1)]}.{m.group(2)}"
    raise GGUFError(f"{source}: tensor {name} has no Hugging Face counterpart in a llama/qwen2 model")


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation: its converter interleaves each head's two rotary halves
    (rows ``[h, 2, d/2] -> [h, d/2, 2]``); HF's rotate-half layout keeps the halves apart.
    ``w``: ``[n_head * head_dim, ...]`` (a weight ``[out, in]`` or a bias ``[out]``)."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_quant_types(reader, source: str) -> None:
    """Fail before writing anything when a tensor's quant type cannot be dequantized."""
    known = set(quants._type_traits) | {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16}
    for t in reader.tensors:
        if t.tensor_type not in known:
            raise GGUFError(f"{source}: tensor {t.name} has quant type {t.tensor_type.name}, which the gguf package "
                            f"cannot dequantize")


def dequantized(tensor, source: str) -> np.ndarray:
    """One GGUF tensor as float32 in numpy (row-major, HF) shape: GGML lists dims fastest first."""
    try:
        arr = quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise GGUFError(f"{source}: tensor {tensor.name} has quant type {tensor.tensor_type.name}, which the gguf "
                        "package cannot dequantize") from None
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    return np.asarray(arr, dtype=np.float32).reshape(shape)


def iter_hf_tensors(reader, cfg: dict, source: str):
    """(HF name, float32 array) for every weight; ``rope_freqs`` is consumed by the config."""
    n_heads, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            continue
        name = hf_tensor_name(t.name, source)
        w = dequantized(t, source)
        if cfg["model_type"] == "llama" and (".q_proj." in name or ".k_proj." in name):
            w = unpermute_rows(w, n_heads if ".q_proj." in name else n_kv)
        yield name, w


def write_safetensors(tensors, out: Path, dtype: str, max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
    """Stream tensors into ``model.safetensors`` or shards + index; only one shard is in memory."""
    import ml_dtypes  # deferred: ml_dtypes is slow to import; only the converter writes bfloat16

    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(np.float32)
    shards: list[list[str]] = []
    current: dict[str, np.ndarray] = {}
    size = total = 0

    def flush():
        i = len(shards) + 1
        save_file(current, str(out / f"shard-{i:05d}.tmp"), metadata={"format": "pt"})
        shards.append(sorted(current))

    for name, w in tensors:
        w = w.astype(np_dtype)
        if current and size + w.nbytes > max_shard_bytes:
            flush()
            current, size = {}, 0
        current[name] = w
        size += w.nbytes
        total += w.nbytes
    if current:
        flush()
    if len(shards) == 1:
        (out / "shard-00001.tmp").rename(out / "model.safetensors")
        return
    weight_map = {}
    for i, names in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        (out / f"shard-{i:05d}.tmp").rename(out / fname)
        weight_map.update({n: fname for n in names})
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")


# --------------------------------------------------------------------------- tokenizer
def build_tokenizer(meta: dict, source: str):
    """A ``PreTrainedTokenizerFast`` from the GGUF's vocabulary, merges and special tokens, built by
    transformers' GGUF tokenizer conversion (no torch needed)."""
    from transformers import PreTrainedTokenizerFast  # deferred: transformers is slow to import
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (  # deferred: transformers is slow to import
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    if "tokenizer.ggml.tokens" not in meta:
        raise GGUFError(f"{source}: no tokenizer in the metadata (tokenizer.ggml.tokens missing)")
    tok_dict = {new: meta[f"tokenizer.{k}"] for k, new in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
                if f"tokenizer.{k}" in meta}
    try:
        backend, extra = convert_gguf_tokenizer(meta["general.architecture"], tok_dict)
    except (ValueError, KeyError) as e:
        raise GGUFError(f"{source}: cannot rebuild the tokenizer from its metadata ({type(e).__name__}: {e})") from None
    tokens = meta["tokenizer.ggml.tokens"]
    kwargs = {}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        tid = meta.get(f"tokenizer.ggml.{key}")
        if tid is not None and 0 <= int(tid) < len(tokens):
            kwargs[name] = tokens[int(tid)]
    for flag in ("add_bos_token", "add_eos_token"):
        if f"tokenizer.ggml.{flag}" in meta:
            kwargs[flag] = bool(meta[f"tokenizer.ggml.{flag}"])
    kwargs.update(extra or {})
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
    if meta.get("tokenizer.chat_template"):
        tok.chat_template = meta["tokenizer.chat_template"]
    return tok


# --------------------------------------------------------------------------- conversion
def convert_gguf(path: str | os.PathLike, out: str | os.PathLike, *, dtype: str = "float32",
                 chat_template: str | None = None, progress: bool = False) -> Path:
    """Write the HF checkpoint directory ``out`` from the GGUF file ``path``; returns ``out``.

    ``chat_template``: template text that replaces the file's own (e.g. one that renders tools).
    ``progress``: a progress bar over the tensors.
    """
    if dtype not in ("float32", "bfloat16"):
        raise GGUFError(f"dtype {dtype!r}: choose float32 or bfloat16")
    path, out = Path(path), Path(out)
    reader = open_gguf(path)
    meta = metadata(reader)
    names = {t.name for t in reader.tensors}
    cfg = hf_config(meta, names, str(path))
    check_quant_types(reader, str(path))
    if "rope_freqs.weight" in names:
        freqs = dequantized(next(t for t in reader.tensors if t.name == "rope_freqs.weight"), str(path)).ravel()
        theta = cfg["rope_parameters"]["rope_theta"]
        cfg["rope_parameters"] = {**llama3_rope_scaling(freqs, theta, cfg["head_dim"], str(path)), "rope_theta": theta}
    cfg["dtype"] = dtype
    tok = build_tokenizer(meta, str(path))
    if chat_template is not None:
        tok.chat_template = chat_template
    out.mkdir(parents=True, exist_ok=True)
    tensors = tqdm(iter_hf_tensors(reader, cfg, str(path)), total=len(reader.tensors) - ("rope_freqs.weight" in names),
                   desc="convert GGUF", unit="tensor", disable=not progress)
    write_safetensors(tensors, out, dtype)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    gen = {"bos_token_id": cfg.get("bos_token_id"), "eos_token_id": cfg.get("eos_token_id"),
           "pad_token_id": cfg.get("pad_token_id")}
    (out / "generation_config.json").write_text(json.dumps({k: v for k, v in gen.items() if v is not None}, indent=2) + "\n")
    tok.save_pretrained(str(out))
    return out


@dataclasses.dataclass
class Args:
    """Convert a GGUF file (llama or qwen2 architecture) into a local Hugging Face checkpoint directory."""

    file: tyro.conf.Positional[Path]
    """The .gguf file."""
    out: Path
    """Output directory (config.json, model.safetensors, tokenizer files, chat template)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype of the written weights (every quant type is dequantized to it)."""
    chat_template: Path | None = None
    """A Jinja chat template file that replaces the GGUF's own (e.g. one that renders tools)."""


def _main(argv=None) -> int:
    args = tyro.cli(Args, args=argv)
    template = args.chat_template.read_text() if args.chat_template else None
    print(f"wrote {convert_gguf(args.file, args.out, dtype=args.dtype, chat_template=template, progress=True)}")
    return 0


def main(argv=None) -> int:
    from ttpa_jax.core.cli import stage_main  # the package's CLI error rule: `error: <message>`, exit 2

    return stage_main(_main)(argv)


if __name__ == "__main__":
    sys.exit(main())
