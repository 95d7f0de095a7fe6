"""The JAX side of export: a run's trained model rebuilt from its base and checkpoint, written as
merged Hugging Face weights, as a PEFT LoRA adapter (``adapter_config.json`` +
``adapter_model.safetensors`` in PEFT's tensor names), or as GGUF (the merged float32 weights in a
temporary directory, written by ``export.to_gguf``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from ttpa_jax.export.settings import Args, run_config
from ttpa_jax.export.to_gguf import write_gguf
from ttpa_jax.model.base_models import resolve_model
from ttpa_jax.model.hf_io import save_pretrained
from ttpa_jax.model.lora import iter_linears
from ttpa_jax.train.checkpoint import Checkpoints
from ttpa_jax.train.config import RunArgs
from ttpa_jax.train.trainer import build_model, split_model


def load_run(run_dir: str | Path, step: int | None = None):
    """The trained model of a run: base rebuilt from its HF directory, checkpoint laid over it.

    Returns (model, config, step).
    """
    cfg = run_config(run_dir)
    ckpts = Checkpoints(run_dir, keep=cfg.keep)
    steps = ckpts.all_steps()
    if not steps:
        raise FileNotFoundError(f"{run_dir}: no checkpoints")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"{run_dir}: no checkpoint for step {step} (have {steps})")
    model = build_model(cfg)
    lora = cfg.lora.rank > 0
    graphdef, trainable, frozen = split_model(model, lora)
    trainable = jax.tree.map(lambda x: x.astype(jnp.float32), trainable)
    restored, _ = ckpts.restore_trainable(step, trainable)
    ckpts.close()
    return nnx.merge(graphdef, restored, frozen), cfg, step


def save_peft_adapter(model, out_dir: str | Path, base_model_dir: str, cfg: RunArgs) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` in PEFT's naming."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, lin in iter_linears(model):
        if lin.lora_a is None:
            continue
        prefix = f"base_model.model.model.{name}"
        tensors[f"{prefix}.lora_A.weight"] = np.asarray(jax.device_get(lin.lora_a[...]), np.float32)
        tensors[f"{prefix}.lora_B.weight"] = np.asarray(jax.device_get(lin.lora_b[...]), np.float32)
    if not tensors:
        raise ValueError("the run has no LoRA adapters (it was trained with --lora.rank 0); export merged weights instead")
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(Path(base_model_dir).absolute()),
        "r": cfg.lora.rank, "lora_alpha": cfg.lora.alpha, "lora_dropout": cfg.lora.dropout,
        "target_modules": sorted(cfg.lora.targets), "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "use_rslora": False, "use_dora": False, "modules_to_save": None,
        "init_lora_weights": True, "layers_to_transform": None, "layers_pattern": None,
    }
    (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")
    return out


def export(args: Args) -> Path:
    """Write the export ``args`` describe; return the output directory."""
    model, cfg, step = load_run(args.run, args.step)
    tokenizer_dir = cfg.tokenizer or (cfg.model if Path(cfg.model).is_dir() else None)
    if args.format == "gguf":
        tokenizer_dir = tokenizer_dir or resolve_model(cfg.model)  # a base model name -> its directory
        if not Path(tokenizer_dir).is_dir():
            raise ValueError(f"--format gguf needs the run's tokenizer; the run started from preset {cfg.model!r} "
                             "without --tokenizer")
        Path(args.out).absolute().parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="ttpa-gguf-", dir=Path(args.out).absolute().parent) as tmp:
            merged = save_pretrained(model, tmp, tokenizer_dir=tokenizer_dir, dtype=jnp.float32)  # LoRA merged
            if jax.process_index() == 0:
                write_gguf(merged, args.out, args.gguf_type, name=Path(args.run).name)
                print(f"exported step {step} of {args.run} to {args.out} (GGUF, {args.gguf_type})")
        return Path(args.out)
    if args.format == "peft":
        if not Path(cfg.model).is_dir():
            raise ValueError(f"--peft needs a base model directory; the run started from preset {cfg.model!r}")
        out = save_peft_adapter(model, args.out, cfg.model, cfg)
    else:
        dtype = jnp.dtype(args.dtype) if args.dtype else None
        if dtype is None and Path(cfg.model).is_dir():
            hf = json.loads((Path(cfg.model) / "config.json").read_text())
            dtype = jnp.dtype(hf.get("dtype") or hf.get("torch_dtype") or "float32")
        out = save_pretrained(model, args.out, tokenizer_dir=tokenizer_dir, dtype=dtype)
    if jax.process_index() == 0:
        print(f"exported step {step} of {args.run} to {out}" + (" (PEFT adapter)" if args.format == "peft" else ""))
    return out
