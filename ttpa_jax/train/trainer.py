"""The jitted training step and the state it updates, for the units trained on tokenized records:
build the model, split it, place it, and step it with an ``Objective``.

The step is a pure ``jax.jit`` function of (trainable, frozen, reference, optimizer state, batch,
key): the model is split with ``nnx.split`` outside and merged inside. With LoRA, the trainable part
is the ``nnx.LoRAParam`` adapters (float32) and the frozen base is stored in the compute dtype; a
reference is the same network with adapters off. Without LoRA every ``nnx.Param`` trains in float32
and a reference is a frozen copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ttpa_jax.model.hf_io import load_pretrained
from ttpa_jax.model.lora import apply_lora
from ttpa_jax.model.sharding import Placement, loader_shardings
from ttpa_jax.model.transformer import Ctx, Transformer, init_model
from ttpa_jax.train.batches import Batch
from ttpa_jax.train.config import RunArgs
from ttpa_jax.train.optim import make_optimizer


# --------------------------------------------------------------------------- model
def build_model(cfg: RunArgs, placement: Placement | None = None) -> Transformer:
    """The base model (from an HF directory or a preset) with LoRA adapters attached when rank > 0."""
    compute = jnp.dtype(cfg.dtype)
    base_dtype = compute if cfg.lora.rank > 0 else jnp.float32  # trainable weights are fp32
    if Path(cfg.model).is_dir():
        shardings = loader_shardings(placement.mesh) if placement else None
        model = load_pretrained(cfg.model, dtype=base_dtype, compute_dtype=compute, remat=cfg.remat, shardings=shardings)
    else:
        model = init_model(cfg.model, seed=cfg.seed, dtype=compute, param_dtype=base_dtype, remat=cfg.remat)
    return apply_lora(model, cfg.lora, seed=cfg.seed)


def split_model(model: Transformer, lora: bool):
    """(graphdef, trainable, frozen): adapters vs the rest with LoRA, all Params vs the rest without."""
    return nnx.split(model, nnx.LoRAParam if lora else nnx.Param, ...)


@dataclasses.dataclass(frozen=True)
class Objective:
    """A unit's loss as the step runs it, in three parts, so that gradient accumulation and multi-device
    runs give exactly the full-batch result:

    - ``normalizers(batch) -> dict``: global denominators (token weight, number of pairs), computed once
      over the whole batch before it is split into micro-batches;
    - ``loss(model, reference, batch, ctx, norms) -> (loss, sums)``: the micro-batch's share of the
      full-batch loss, and additive metric sums;
    - ``finalize(sums) -> metrics``: metric means from the sums of all micro-batches.

    ``needs_reference``: the step passes ``loss`` the reference model (adapters off, or a frozen copy).
    """

    normalizers: Callable
    loss: Callable
    finalize: Callable
    needs_reference: bool = False


# --------------------------------------------------------------------------- step
def make_train_step(graphdef, objective: Objective, tx: optax.GradientTransformation, accum: int, lora: bool,
                    out_shardings=None):
    """jit(step)(trainable, frozen, ref_params, opt_state, batch, key) -> (trainable, opt_state, metrics).

    ``out_shardings``: (trainable, opt_state, metrics) shardings, so every step keeps the same layout.
    """

    def reference(trainable, frozen, ref_params):
        """The DPO reference model (objectives run it with adapters off)."""
        if lora:
            return nnx.merge(graphdef, jax.lax.stop_gradient(trainable), frozen)
        if ref_params is not None:
            return nnx.merge(graphdef, ref_params, frozen)
        return None

    def loss_fn(trainable, frozen, ref_params, batch, norms, key):
        model = nnx.merge(graphdef, trainable, frozen)
        ref = reference(trainable, frozen, ref_params) if objective.needs_reference else None
        return objective.loss(model, ref, batch, Ctx(lora=True, dropout_key=key), norms)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(trainable, frozen, ref_params, opt_state, batch, key):
        norms = objective.normalizers(batch)
        if accum == 1:
            (_, sums), grads = grad_fn(trainable, frozen, ref_params, batch, norms, key)
        else:
            micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)

            def body(carry, xs):
                mb, i = xs
                (_, s), g = grad_fn(trainable, frozen, ref_params, mb, norms, jax.random.fold_in(key, i))
                return jax.tree.map(jnp.add, carry, (g, s)), None

            first = jax.tree.map(lambda x: x[0], micro)
            shapes = jax.eval_shape(lambda: grad_fn(trainable, frozen, ref_params, first, norms, key))
            (_, sums_shape), grads_shape = shapes
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (grads_shape, sums_shape))
            (grads, sums), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum)))
        metrics = objective.finalize(sums)
        metrics["grad_norm"] = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        return trainable, opt_state, metrics

    return jax.jit(step, donate_argnums=(0, 3), out_shardings=out_shardings)


# --------------------------------------------------------------------------- helpers
def tokenizer_dir(cfg: RunArgs) -> Path:
    d = Path(cfg.tokenizer or cfg.model)
    if not d.is_dir():
        raise ValueError(f"--model {cfg.model} is a preset: give --tokenizer DIR (a directory with a tokenizer and chat template)")
    return d


def host_metrics(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


# --------------------------------------------------------------------------- state
@dataclasses.dataclass
class Trainer:
    """What the step function reads and updates, placed on the mesh: the model split into trainable
    and frozen parts, the DPO reference copy (full fine-tuning only), the optimizer state."""

    graphdef: object
    trainable: nnx.State
    frozen: nnx.State
    ref_params: nnx.State | None
    opt_state: object
    objective: Objective
    placement: Placement
    step_fn: object
    pad_id: int
    lora: bool

    @classmethod
    def create(cls, cfg: RunArgs, placement: Placement, steps: int, objective: Objective) -> Trainer:
        """An objective that needs the reference: full fine-tuning keeps a frozen copy of the weights
        (with LoRA the reference is the adapters-off network, no copy)."""
        lora = cfg.lora.rank > 0
        model = build_model(cfg, placement)
        pad_id = model.config.pad_id
        graphdef, trainable, frozen = split_model(model, lora)
        trainable = placement.state(jax.tree.map(lambda x: x.astype(jnp.float32), trainable))
        frozen = placement.state(frozen)
        ref_params = None
        if objective.needs_reference and not lora:
            # a real copy: the trainable buffers are donated to (and overwritten by) every step
            ref_params = jax.tree.map(lambda x: jnp.array(x, dtype=jnp.dtype(cfg.dtype), copy=True), trainable)
        tx = make_optimizer(cfg.optim, steps)
        opt_state = placement.optimizer_state(tx, trainable)
        out_shardings = (placement.shardings(trainable), jax.tree.map(lambda x: x.sharding, opt_state),
                         placement.replicated)
        step_fn = make_train_step(graphdef, objective, tx, cfg.optim.grad_accum, lora, out_shardings)
        return cls(graphdef, trainable, frozen, ref_params, opt_state, objective, placement, step_fn, pad_id, lora)

    def step(self, host_batch: Batch, key) -> dict[str, jax.Array]:
        """One optimizer step on this process's share of the global batch; returns the metrics."""
        batch = self.placement.batch(host_batch)
        with jax.set_mesh(self.placement.mesh):
            self.trainable, self.opt_state, metrics = self.step_fn(
                self.trainable, self.frozen, self.ref_params, self.opt_state, batch, key)
        return metrics
