"""Per-device bytes of a training run's state, computed from the abstract model: nothing is allocated.

The model is built with ``nnx.eval_shape`` exactly as ``trainer.build_model`` builds it (frozen base
in the compute dtype with LoRA, every parameter trainable in float32 without), split like
``trainer.split_model``, and every array is divided by the number of devices that share it under the
sharding rules (``sharding.spec_for``: an indivisible dimension is replicated). The optimizer state
comes from ``jax.eval_shape`` of the real optimizer (``optim.make_optimizer``), its moments sharded
like their parameters and its counters replicated, as ``sharding.optimizer_shardings`` places them.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, AxisType

from ttpa_jax.model.architecture import ModelConfig
from ttpa_jax.model.lora import LoraConfig, apply_lora
from ttpa_jax.model.sharding import MESH_AXES, optimizer_shardings, spec_for, state_shardings
from ttpa_jax.model.transformer import Transformer
from ttpa_jax.train.config import OptimConfig
from ttpa_jax.train.optim import make_optimizer

# Sequence features of a batch (sharded over the batch axes on their first dimension), bytes per token.
BATCH_BYTES_PER_TOKEN = {"sft": 4 + 4 + 4, "dpo": 2 * (4 + 4 + 4)}  # ids int32, mask int32, weights fp32


def abstract_mesh(data: int, fsdp: int, tensor: int) -> AbstractMesh:
    """A mesh of the given shape with no devices behind it: enough for ``spec_for`` and shard shapes."""
    return AbstractMesh((data, fsdp, tensor), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def shard_count(spec, mesh) -> int:
    """How many devices split an array with PartitionSpec ``spec`` (its sharded dims' mesh sizes)."""
    n = 1
    for entry in spec:
        for axis in (entry,) if isinstance(entry, str) else (entry or ()):
            n *= mesh.shape[axis]
    return n


def local_size(axes, shape, mesh) -> int:
    """Elements of one device's shard of an array with logical ``axes`` and ``shape``."""
    return math.prod(shape) // shard_count(spec_for(axes, tuple(shape), mesh), mesh)


def abstract_train_model(cfg: ModelConfig, dtype: str, lora: LoraConfig) -> Transformer:
    """The model ``build_model`` would build, with ShapeDtypeStruct leaves."""
    compute = jnp.dtype(dtype)
    base = compute if lora.rank > 0 else jnp.dtype(jnp.float32)
    return nnx.eval_shape(
        lambda: apply_lora(Transformer(cfg, dtype=compute, param_dtype=base, rngs=nnx.Rngs(0)), lora)
    )


def split_abstract(model: Transformer, lora: bool):
    """(trainable, frozen) abstract states; trainable leaves are float32 as the trainer casts them."""
    _, trainable, frozen = nnx.split(model, nnx.LoRAParam if lora else nnx.Param, ...)
    as_f32 = lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32)  # noqa: E731
    return jax.tree.map(as_f32, trainable), frozen


def _variables(state):
    return jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def state_bytes(state, mesh, dtype=None) -> int:
    """Per-device bytes of an abstract nnx state (in ``dtype`` instead of each leaf's own, if given)."""
    total = 0
    for var in _variables(state):
        item = np.dtype(dtype or var.dtype).itemsize
        total += local_size(var.get_metadata().get("axes"), var.shape, mesh) * item
    return total


def count(state) -> int:
    """Number of elements (parameters) in an abstract nnx state."""
    return sum(math.prod(v.shape) for v in _variables(state))


def optimizer_bytes(trainable, mesh, optim: OptimConfig | None = None) -> int:
    """Per-device bytes of ``make_optimizer(optim).init(trainable)`` (AdamW: two fp32 moments per
    trainable parameter, plus replicated step counters)."""
    tx = make_optimizer(optim or OptimConfig(), 100)
    abstract = jax.eval_shape(tx.init, trainable)
    shardings = optimizer_shardings(tx, trainable, state_shardings(trainable, mesh), mesh)
    total = 0
    for leaf, sharding in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
        total += math.prod(sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    return total


def gathered_bytes(state, mesh, dtype) -> tuple[int, int]:
    """Extra per-device bytes when every FSDP-sharded weight of ``state`` is all-gathered (in the
    compute ``dtype``) for the matmuls: full size over the tensor split, minus the resident shard.
    Returns (decoder layers, the rest: embedding, LM head)."""
    if mesh.shape["fsdp"] == 1:
        return 0, 0
    item = np.dtype(dtype).itemsize
    layers = other = 0
    flat, _ = jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    for path, var in flat:
        spec = spec_for(var.get_metadata().get("axes"), tuple(var.shape), mesh)
        if not any(e == "fsdp" or (isinstance(e, tuple) and "fsdp" in e) for e in spec):
            continue
        own = math.prod(var.shape) // shard_count(spec, mesh)
        extra = own * (mesh.shape["fsdp"] - 1) * item
        if any(getattr(k, "key", None) == "layers" for k in path):
            layers += extra
        else:
            other += extra
    return layers, other


@dataclasses.dataclass(frozen=True)
class StateBytes:
    """Per-device bytes of the arrays a train step keeps between steps (its arguments)."""

    trainable: int
    frozen: int
    reference: int  # full fine-tuning DPO: a frozen compute-dtype copy of the trainable weights
    optimizer: int
    batch: int
    key: int = 8  # the step's PRNG key (two uint32)

    @property
    def params(self) -> int:
        return self.trainable + self.frozen + self.reference

    @property
    def arguments(self) -> int:
        return self.params + self.optimizer + self.batch + self.key


def batch_bytes(objective: str, batch: int, seq_len: int, mesh, precompute_ref: bool = False) -> int:
    """Per-device bytes of one global batch: [B, T] features sharded over ("data", "fsdp")."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    per_row = BATCH_BYTES_PER_TOKEN[objective] * seq_len
    if objective == "dpo" and precompute_ref:
        per_row += 2 * 4  # ref_chosen_logp, ref_rejected_logp
    return batch * per_row // shards
