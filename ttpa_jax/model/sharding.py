"""One device mesh with axes ("data", "fsdp", "tensor") and a small table mapping the parameters'
logical axis names onto it.

Every parameter carries logical ``axes`` metadata (see ``transformer.py``); the rules
(``settings.ShardingRules``, the run's ``--sharding.*``; ``RULES`` the defaults) say which mesh axes
shard each logical axis. A dimension that does not divide evenly by its mesh axes is replicated
instead; two logical axes of one array mapped to the same mesh axis raise. Batches are sharded over
("data", "fsdp") on their first dimension.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ttpa_jax.model.settings import MESH_AXES, ShardingRules

BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axes (empty: replicated). Parameters: FSDP shards the model dimension, tensor
# parallelism shards heads, MLP width and vocabulary. Activations: batch over data and fsdp, the
# tensor-parallel dimensions follow their weights.
RULES: dict[str, tuple[str, ...]] = ShardingRules().table()
_active = {"rules": RULES}


def use_rules(rules: ShardingRules) -> None:
    """Make ``rules`` the table every later ``spec_for`` (parameters, batches, activations) reads: a run
    sets its own before it builds anything."""
    _active["rules"] = rules.table()


def mesh_shape(data: int, fsdp: int, tensor: int, n_devices: int) -> tuple[int, int, int]:
    """Resolve one -1 entry to fill the devices; check the product."""
    dims = [data, fsdp, tensor]
    if dims.count(-1) > 1:
        raise ValueError("mesh: at most one of data/fsdp/tensor may be -1")
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        if n_devices % known:
            raise ValueError(f"mesh: {n_devices} devices do not divide by {known}")
        dims[dims.index(-1)] = n_devices // known
    if math.prod(dims) > n_devices:
        raise ValueError(f"mesh: data*fsdp*tensor = {math.prod(dims)} but there are only {n_devices} devices")
    return tuple(dims)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices=None) -> Mesh:
    """A mesh over ``devices`` (default: all). A fully specified shape smaller than the device count
    uses the first devices (single-process runs only)."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    n = math.prod(shape)
    if n < len(devices) and jax.process_count() > 1:
        raise ValueError(f"mesh: a multi-process run must use all {len(devices)} devices, not {n}")
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices[:n])


def spec_for(axes: tuple | None, shape: tuple[int, ...], mesh) -> P:
    """PartitionSpec for an array of logical ``axes`` and ``shape``; indivisible dims are replicated.

    ``mesh`` is a Mesh or AbstractMesh (only its axis sizes are used).
    """
    if not axes:
        return P()
    rules = _active["rules"]
    out, used, owner = [], set(), {}
    for name, dim in zip(axes, shape):
        names = rules.get(name, ()) if name else ()
        for a in names:
            if a in owner:
                raise ValueError(f"sharding rules: logical axes {owner[a]!r} and {name!r} of one array {tuple(axes)} "
                                 f"both map to mesh axis {a!r} (set --sharding.{name} or --sharding.{owner[a]})")
            owner[a] = name
        names = tuple(a for a in names if mesh.shape[a] > 1 and a not in used)
        size = math.prod(mesh.shape[a] for a in names)
        if not names or dim % size:
            out.append(None)
        else:
            out.append(names[0] if len(names) == 1 else names)
            used.update(names)
    return P(*out)


def shard_activation(x, axes: tuple):
    """Constrain an activation to its logical ``axes`` under the mesh in context (``jax.set_mesh``);
    a no-op without one, so the model runs unchanged on a single device."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, spec_for(axes, x.shape, mesh))


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(state: nnx.State, mesh: Mesh):
    """``state`` with each Variable's value replaced by its NamedSharding (its ``axes`` metadata
    decide), so the tree has the same structure as the arrays it describes (usable as jit shardings)."""

    def one(var):
        spec = spec_for(var.get_metadata().get("axes"), tuple(var.shape), mesh)
        return var.replace(NamedSharding(mesh, spec))

    return jax.tree.map(one, state, is_leaf=_is_var)


def place_state(state: nnx.State, mesh: Mesh) -> nnx.State:
    """Put every leaf of ``state`` onto its shards."""
    return jax.device_put(state, state_shardings(state, mesh))


def optimizer_shardings(tx, params, param_shardings, mesh: Mesh):
    """Shardings for ``tx.init(params)``: moments follow their parameter, counters are replicated."""
    abstract = jax.eval_shape(tx.init, params)
    return optax.tree_map_params(
        tx, lambda _, s: s, abstract, param_shardings,
        transform_non_params=lambda _: NamedSharding(mesh, P()),
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )


def loader_shardings(mesh: Mesh):
    """``fn(state_path, shape) -> Sharding`` for ``load_pretrained``: tensors land on their shards."""
    def fn(path, shape, axes):
        return NamedSharding(mesh, spec_for(axes, shape, mesh))

    return fn


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def put_batch(batch, mesh: Mesh):
    """Process-local numpy batch (a pytree: a typed batch or a dict of arrays) -> the same tree of
    global arrays sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda v: jax.make_array_from_process_local_data(sharding, v), batch)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a run's arrays live: a mesh plus the helpers to put state and batches on it."""

    mesh: Mesh

    def state(self, state):
        return place_state(state, self.mesh)

    def shardings(self, state):
        return state_shardings(state, self.mesh)

    def optimizer_state(self, tx, params):
        """``tx.init(params)`` created directly on its shards."""
        out = optimizer_shardings(tx, params, self.shardings(params), self.mesh)
        return jax.jit(tx.init, out_shardings=out)(params)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def batch(self, batch):
        return put_batch(batch, self.mesh)

    @property
    def batch_divisor(self) -> int:
        return self.mesh.shape["data"] * self.mesh.shape["fsdp"]
