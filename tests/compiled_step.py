"""Compile the real train step (``RecordUnit.trainer``: the model built, split, placed and
jitted as ``loop.train`` does) and return XLA's memory analysis of it, for ``ttpa_jax.plan.memory``."""

from __future__ import annotations

import jax
import numpy as np

from ttpa_jax.model.lora import LoraConfig
from ttpa_jax.model.sharding import Placement, make_mesh
from ttpa_jax.train.batches import PairRows, TokenRows
from ttpa_jax.train.config import MeshConfig, OptimConfig
from ttpa_jax.train.methods import load_unit, method_config


def host_batch(objective: str, batch: int, seq_len: int) -> TokenRows | PairRows:
    prefixes = ("",) if objective == "sft" else ("chosen_", "rejected_")
    out = {}
    for p in prefixes:
        ids, mask, weights = (("input_ids", "attention_mask", "weights") if p == "" else
                              (p + "ids", p + "mask", p + "weights"))
        out[ids] = np.ones((batch, seq_len), np.int32)
        out[mask] = np.ones((batch, seq_len), np.int32)
        out[weights] = np.ones((batch, seq_len), np.float32)
    return TokenRows(**out) if objective == "sft" else PairRows(**out)


def compiled_memory(model: str, mesh: tuple[int, int, int], *, objective: str = "sft", lora_rank: int = 8,
                    batch_size: int = 8, seq_len: int = 128, dtype: str = "float32", grad_accum: int = 1,
                    logits_chunk: int = 0):
    """``compiled.memory_analysis()`` of the train step for this run on the first devices."""
    cfg = method_config(objective, model=model, data="", out="", lora=LoraConfig(rank=lora_rank), mesh=MeshConfig(*mesh),
                        dtype=dtype, optim=OptimConfig(grad_accum=grad_accum), logits_chunk=logits_chunk)
    placement = Placement(make_mesh(*mesh))
    st = load_unit(cfg).trainer(cfg, placement, steps=10)
    batch = placement.batch(host_batch(objective, batch_size, seq_len))
    with jax.set_mesh(placement.mesh):
        lowered = st.step_fn.lower(st.trainable, st.frozen, st.ref_params, st.opt_state, batch, jax.random.key(0))
    return lowered.compile().memory_analysis()
