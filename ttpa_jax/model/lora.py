"""LoRA adapters as ``nnx.LoRAParam`` variables on the model's linear layers.

``apply_lora`` attaches A ``[r, in]`` (small random) and B ``[out, r]`` (zeros) to the chosen
projections, so the adapted model starts equal to the base model and the first DPO loss is ln 2.
``Ctx(lora=False)`` runs the same network without adapters: the DPO reference, with one copy of the
base weights. ``merge_lora`` folds ``scale * B @ A`` into the base weights for export.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from ttpa_jax.model.settings import ALL_TARGETS, LoraConfig  # the settings live in the JAX-free layer
from ttpa_jax.model.transformer import Linear, Transformer

__all__ = ["ALL_TARGETS", "LoraConfig", "apply_lora", "has_lora", "iter_linears", "merge_lora", "merged_weight"]


def iter_linears(model: Transformer):
    """Yield ``(name, Linear)`` for each projection in the decoder layers (not the LM head)."""
    for i, layer in enumerate(model.layers):
        for group in ("self_attn", "mlp"):
            mod = getattr(layer, group)
            for name in ALL_TARGETS:
                lin = getattr(mod, name, None)
                if isinstance(lin, Linear):
                    yield f"layers.{i}.{group}.{name}", lin


def apply_lora(model: Transformer, cfg: LoraConfig, seed: int = 0) -> Transformer:
    """Attach adapters in place (A ~ Kaiming-uniform as in PEFT, B = 0). Returns the model."""
    if cfg.rank <= 0:
        return model
    cfg.check()
    key = jax.random.key(seed)
    for idx, (name, lin) in enumerate(iter_linears(model)):
        if name.rsplit(".", 1)[-1] not in cfg.targets:
            continue
        d_out, d_in = lin.weight.shape
        bound = 1.0 / math.sqrt(d_in)  # kaiming_uniform(a=sqrt(5)) on [r, in]
        a = jax.random.uniform(jax.random.fold_in(key, idx), (cfg.rank, d_in), jnp.float32, -bound, bound)
        axes_out, axes_in = lin.weight.get_metadata()["axes"]
        lin.lora_a = nnx.LoRAParam(a, axes=("lora_rank", axes_in))
        lin.lora_b = nnx.LoRAParam(jnp.zeros((d_out, cfg.rank), jnp.float32), axes=(axes_out, "lora_rank"))
        lin.lora_scale = cfg.alpha / cfg.rank
        lin.lora_dropout = cfg.dropout
    return model


def has_lora(model: Transformer) -> bool:
    return any(lin.lora_a is not None for _, lin in iter_linears(model))


def merged_weight(lin: Linear) -> jax.Array:
    """``W + scale * B @ A`` in the weight's dtype (computed in fp32)."""
    w = lin.weight[...]
    if lin.lora_a is None:
        return w
    delta = lin.lora_scale * (lin.lora_b[...].astype(jnp.float32) @ lin.lora_a[...].astype(jnp.float32))
    return (w.astype(jnp.float32) + delta).astype(w.dtype)


def merge_lora(model: Transformer) -> Transformer:
    """Fold adapters into the base weights in place and remove them."""
    for _, lin in iter_linears(model):
        if lin.lora_a is not None:
            lin.weight[...] = merged_weight(lin)
            lin.lora_a = nnx.data(None)
            lin.lora_b = nnx.data(None)
            lin.lora_scale = 0.0
    return model
