"""Compile the real train step (model built, split, placed and jitted as ``trainer.train`` does) and
return XLA's memory analysis of it, for comparing with ``ttpa_jax.plan``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ttpa_jax.lora import LoraConfig
from ttpa_jax.optim import make_optimizer
from ttpa_jax.sharding import Placement, make_mesh
from ttpa_jax.train_config import MeshConfig, OptimConfig, TrainConfig
from ttpa_jax.trainer import build_model, make_objective, make_train_step, split_model


def host_batch(objective: str, batch: int, seq_len: int) -> dict[str, np.ndarray]:
    prefixes = ("",) if objective == "sft" else ("chosen_", "rejected_")
    out = {}
    for p in prefixes:
        ids, mask, weights = (("input_ids", "attention_mask", "weights") if p == "" else
                              (p + "ids", p + "mask", p + "weights"))
        out[ids] = np.ones((batch, seq_len), np.int32)
        out[mask] = np.ones((batch, seq_len), np.int32)
        out[weights] = np.ones((batch, seq_len), np.float32)
    return out


def compiled_memory(model: str, mesh: tuple[int, int, int], *, objective: str = "sft", lora_rank: int = 8,
                    batch_size: int = 8, seq_len: int = 128, dtype: str = "float32", grad_accum: int = 1):
    """``compiled.memory_analysis()`` of the train step for this run on the first devices."""
    cfg = TrainConfig(objective=objective, model=model, lora=LoraConfig(rank=lora_rank), mesh=MeshConfig(*mesh),
                      dtype=dtype, optim=OptimConfig(grad_accum=grad_accum))
    placement = Placement(make_mesh(*mesh))
    lora = lora_rank > 0
    graphdef, trainable, frozen = split_model(build_model(cfg, placement), lora)
    trainable = placement.state(jax.tree.map(lambda x: x.astype(jnp.float32), trainable))
    frozen = placement.state(frozen)
    objective_fn = make_objective(cfg)
    ref_params = None
    if objective_fn.needs_reference and not lora:
        ref_params = jax.tree.map(lambda x: jnp.array(x, dtype=jnp.dtype(dtype), copy=True), trainable)
    tx = make_optimizer(cfg.optim, 10)
    opt_state = placement.optimizer_state(tx, trainable)
    batch = placement.batch(host_batch(objective, batch_size, seq_len))
    out_shardings = (placement.shardings(trainable), jax.tree.map(lambda x: x.sharding, opt_state),
                     placement.replicated)
    step = make_train_step(graphdef, objective_fn, tx, grad_accum, lora, out_shardings)
    with jax.set_mesh(placement.mesh):
        compiled = step.lower(trainable, frozen, ref_params, opt_state, batch, jax.random.key(0)).compile()
    return compiled.memory_analysis()
