"""Load a local Hugging Face checkpoint directory into the NNX model, and export back to one.

Only safetensors are read (never pickle). A checkpoint is one ``model.safetensors`` or shards listed
in ``model.safetensors.index.json``; tensors may be fp32, fp16 or bf16. Parameter names map 1:1 onto
the model's attribute paths (``model.layers.3.self_attn.q_proj.weight`` <->
``layers[3].self_attn.q_proj.weight``), so loading is a rename plus dtype cast.

Loading fills an abstract model (built with ``nnx.eval_shape``, nothing allocated) tensor by tensor;
with ``shardings`` each tensor is read slice by slice straight onto its devices, so no process holds a
full unsharded copy of a large model.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from safetensors import safe_open
from safetensors.numpy import save_file

from ttpa_jax.core.errors import UserError
from ttpa_jax.model.base_models import resolve_model
from ttpa_jax.model.config import ConfigError, ModelConfig, load_config
from ttpa_jax.model.transformer import Transformer, abstract_model

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
)
IGNORED_CHECKPOINT_KEYS = ("rotary_emb.inv_freq",)  # buffers some older checkpoints carry
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


class CheckpointError(UserError):
    """A checkpoint directory that does not match its config. The message names the tensor or file."""


def hf_name(path: tuple) -> str:
    """Model state path -> HF tensor name."""
    name = ".".join(str(p) for p in path)
    return name if name.startswith("lm_head.") else "model." + name


def _dtype_of(name: str | None):
    return None if name is None else jnp.dtype(name)


def checkpoint_files(model_dir: Path) -> dict[str, Path]:
    """Map tensor name -> safetensors file that holds it."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        files = {}
        for name, fname in weight_map.items():
            f = model_dir / fname
            if not f.is_file():
                raise CheckpointError(f"{index}: tensor {name!r} points to missing file {fname}")
            files[name] = f
        return files
    single = model_dir / "model.safetensors"
    candidates = [single] if single.is_file() else sorted(model_dir.glob("*.safetensors"))
    if not candidates:
        pickles = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(p.name for p in model_dir.glob("*.pt"))
        hint = f" (found {', '.join(pickles)}: pickle checkpoints are not loaded; convert to safetensors)" if pickles else ""
        raise CheckpointError(f"{model_dir}: no model.safetensors or model.safetensors.index.json{hint}")
    files = {}
    for f in candidates:
        with safe_open(f, framework="flax") as h:
            for name in h.keys():
                files[name] = f
    return files


def load_pretrained(
    path: str | os.PathLike,
    dtype=None,
    *,
    compute_dtype=None,
    remat: bool = False,
    shardings: Callable[[tuple, tuple, tuple | None], jax.sharding.Sharding] | None = None,
) -> Transformer:
    """Build the model from a local HF checkpoint directory.

    dtype: parameter dtype (default: the checkpoint's own). compute_dtype: activations (default: dtype).
    shardings: optional ``fn(state_path, shape, logical_axes) -> Sharding``; each tensor is then
    assembled from the slices its devices need (see ``sharding.loader_shardings``).
    """
    model_dir = Path(resolve_model(path))  # a base model name or FILE.gguf -> its cached directory
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: not a directory")
    cfg = load_config(model_dir)
    files = checkpoint_files(model_dir)
    if dtype is None:
        first = next(iter(files.items()))
        with safe_open(first[1], framework="flax") as h:
            dtype = h.get_slice(first[0]).get_dtype()
        dtype = {"F32": jnp.float32, "BF16": jnp.bfloat16, "F16": jnp.float16}.get(dtype, jnp.float32)
    dtype = jnp.dtype(dtype)
    model = abstract_model(cfg, dtype=compute_dtype or dtype, param_dtype=dtype, remat=remat)
    graphdef, state = nnx.split(model)
    flat = nnx.to_flat_state(state)

    expected = {hf_name(p): (p, v) for p, v in flat}
    present = set(files)
    missing = sorted(set(expected) - present)
    if missing:
        raise CheckpointError(
            f"{model_dir}: missing tensor {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    unexpected = sorted(
        n for n in present - set(expected)
        if not n.endswith(IGNORED_CHECKPOINT_KEYS) and not (cfg.tie_word_embeddings and n == "lm_head.weight")
    )
    if unexpected:
        raise CheckpointError(
            f"{model_dir}: unexpected tensor {unexpected[0]} not in a {cfg.model_type} model of this config"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
        )

    by_file: dict[Path, list[str]] = {}
    for name in expected:
        by_file.setdefault(files[name], []).append(name)
    loaded = {}
    for f, names in by_file.items():
        with safe_open(f, framework="flax") as h:
            for name in names:
                p, var = expected[name]
                want = tuple(var.shape)
                got = tuple(h.get_slice(name).get_shape())
                if got != want:
                    raise CheckpointError(
                        f"{f}: tensor {name} has shape {list(got)}, the config expects {list(want)}"
                    )
                if shardings is None:
                    loaded[p] = h.get_tensor(name).astype(dtype)
                else:
                    sl = h.get_slice(name)
                    loaded[p] = jax.make_array_from_callback(
                        want, shardings(p, want, var.get_metadata().get("axes")), lambda idx, sl=sl: np.asarray(sl[idx]).astype(dtype)
                    )
    new_flat = [(p, v.replace(loaded[p])) for p, v in flat]
    return nnx.merge(graphdef, nnx.from_flat_state(new_flat))


def base_weights(model: Transformer) -> dict[str, jax.Array]:
    """HF-named base weights, with any LoRA adapters merged in (``W + scale * B @ A``)."""
    from ttpa_jax.model.lora import merged_weight  # local: lora imports model

    out = {}
    base_params = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))
    for path, var in nnx.to_flat_state(nnx.state(model, base_params)):
        if path[-1] == "weight" and len(path) >= 2:
            owner = _module_at(model, path[:-1])
            out[hf_name(path)] = merged_weight(owner) if getattr(owner, "lora_a", None) is not None else var[...]
        else:
            out[hf_name(path)] = var[...]
    return out


def _module_at(model, path):
    m = model
    for p in path:
        m = m[p] if isinstance(p, int) else getattr(m, p)
    return m


def save_pretrained(
    model: Transformer,
    out_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike | None = None,
    *,
    dtype=None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write an HF checkpoint directory that ``AutoModelForCausalLM.from_pretrained`` loads.

    LoRA adapters are merged into the weights. Tensors go to ``model.safetensors``, or to shards plus
    ``model.safetensors.index.json`` when they exceed ``max_shard_bytes``. Tokenizer files are copied
    from ``tokenizer_dir`` when given. Only process 0 writes; every process must call it (gathering
    sharded weights is collective).
    """
    out = Path(out_dir)
    cfg: ModelConfig = model.config
    dtype = jnp.dtype(dtype or model.param_dtype)
    tensors = {}
    for name, arr in base_weights(model).items():
        if not arr.is_fully_addressable:
            arr = multihost_utils.process_allgather(arr, tiled=True)
        tensors[name] = np.asarray(jax.device_get(arr)).astype(dtype)
    if jax.process_index() != 0:
        return out
    out.mkdir(parents=True, exist_ok=True)
    _write_safetensors(tensors, out, max_shard_bytes)
    hf_cfg = cfg.to_hf_dict()
    hf_cfg["dtype"] = str(dtype)
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
    gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": hf_cfg["eos_token_id"], "pad_token_id": cfg.pad_token_id}
    (out / "generation_config.json").write_text(json.dumps({k: v for k, v in gen.items() if v is not None}, indent=2) + "\n")
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, out)
    return out


def copy_tokenizer(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    src, dst = Path(src), Path(dst)
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    if not copied:
        raise CheckpointError(f"{src}: no tokenizer files found (looked for {', '.join(TOKENIZER_FILES)})")
    return copied


def _write_safetensors(tensors: dict[str, np.ndarray], out: Path, max_shard_bytes: int) -> None:
    for old in list(out.glob("model*.safetensors")) + list(out.glob("model.safetensors.index.json")):
        old.unlink()
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name in sorted(tensors):
        t = tensors[name]
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata=meta)
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname), metadata=meta)
        weight_map.update({k: fname for k in shard})
    total = sum(t.nbytes for t in tensors.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n"
    )


__all__ = ["load_pretrained", "save_pretrained", "CheckpointError", "ConfigError", "checkpoint_files", "hf_name"]
