"""``python -m ttpa_jax.plan --model PRESET|config.json|DIR [flags]``: per-device memory of a training
run before starting it.

Everything is computed from the abstract model and the sharding rules: nothing is allocated and no
devices are needed (``--devices N`` plans for N devices this machine does not have), so a 14B model
plans in seconds on a CPU. Per device it prints the parameters (frozen base in the compute dtype
with LoRA, float32 when every weight trains), the AdamW state, the gradients, the batch, an
activation estimate (formula in ``plan_activations``), the all-gathered weights that FSDP holds
during the step, and the total against common accelerator memories. ``plan(...)`` returns the same
figures as a dict. docs/scaling.md compares the figures with what XLA reports for the compiled step.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Literal

import tyro

from ttpa_jax.core.cli import run, stage_main
from ttpa_jax.model.config import load_config
from ttpa_jax.model.settings import LoraConfig
from ttpa_jax.train.config import MeshConfig, OptimConfig

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class PlanArgs:
    """Per-device memory of a fine-tuning run: parameters, optimizer state, gradients, activations."""

    model: str = "qwen2.5-7b"
    """Preset name (python -m ttpa_jax.models lists them), a config.json path, or a model directory."""
    objective: Literal["sft", "dpo"] = "sft"
    """sft: one sequence per example; dpo: chosen and rejected sequences per pair, plus a reference pass."""
    batch_size: int = 8
    """Global batch per optimizer step: sequences (sft) or preference pairs (dpo), over all devices."""
    seq_len: int = 2048
    """Padded sequence length in tokens."""
    dtype: Literal["float32", "bfloat16"] = "bfloat16"
    """Compute dtype (as train --dtype); the frozen base is stored in it under LoRA."""
    remat: bool = False
    """Recompute each layer's activations in the backward pass (as train --remat)."""
    logits_chunk: int = 0
    """LM-head positions at a time (as train --logits-chunk; 0: the whole sequence)."""
    grad_accum: int = 1
    """Micro-batches per step (as train --optim.grad-accum): activations are for one micro-batch."""
    precompute_ref: bool = False
    """dpo: reference log-probs come with the data (train --precompute-ref): no reference weights."""
    devices: int | None = None
    """Plan for this many devices (default: the mesh product, or this machine's devices when a mesh entry is -1)."""
    memories: tuple[float, ...] = (16, 24, 40, 80, 141)
    """Device memories to check the total against, in GiB."""
    usable: float = 0.9
    """Fraction of a device's memory the run may use (the runtime and XLA's workspace take the rest)."""
    json: bool = False
    """Print the figures as JSON instead of a table."""
    mesh: MeshConfig = MeshConfig()
    """Device mesh as train's --mesh flags; -1 fills the remaining devices."""
    lora: LoraConfig = LoraConfig()


def _devices(args: PlanArgs) -> int:
    if args.devices is not None:
        return args.devices
    dims = (args.mesh.data, args.mesh.fsdp, args.mesh.tensor)
    if -1 not in dims:
        return math.prod(dims)
    import jax  # only to count this machine's devices; the settings stay JAX-free

    return jax.device_count()


def plan_for(args: PlanArgs) -> dict:
    """The per-device figures (bytes) of ``args``; see ``PlanArgs`` for the fields."""
    # The abstract model and mesh need JAX: imported here so that the settings and --help load none.
    from ttpa_jax.model.sharding import mesh_shape
    from ttpa_jax.plan.activations import TensorSplit, activation_bytes  # deferred: keeps this module JAX-free
    from ttpa_jax.plan.state import (  # deferred: keeps this module JAX-free
        StateBytes,
        abstract_mesh,
        abstract_train_model,
        batch_bytes,
        count,
        gathered_bytes,
        optimizer_bytes,
        split_abstract,
        state_bytes,
    )

    cfg = load_config(args.model)
    n_dev = _devices(args)
    shape = mesh_shape(args.mesh.data, args.mesh.fsdp, args.mesh.tensor, n_dev)
    mesh = abstract_mesh(*shape)
    lora = args.lora.rank > 0
    batch_shards = shape[0] * shape[1]
    if args.batch_size % (batch_shards * args.grad_accum):
        raise ValueError(f"batch_size {args.batch_size} must divide by grad_accum ({args.grad_accum}) times the "
                         f"data-parallel devices (data * fsdp = {batch_shards})")

    model = abstract_train_model(cfg, args.dtype, args.lora)
    trainable, frozen = split_abstract(model, lora)
    dpo = args.objective == "dpo"
    ref_copy = dpo and not lora and not args.precompute_ref  # full fine-tuning keeps a frozen copy
    state = StateBytes(
        trainable=state_bytes(trainable, mesh),
        frozen=state_bytes(frozen, mesh),
        reference=state_bytes(trainable, mesh, args.dtype) if ref_copy else 0,
        optimizer=optimizer_bytes(trainable, mesh, OptimConfig(grad_accum=args.grad_accum)),
        batch=batch_bytes(args.objective, args.batch_size, args.seq_len, mesh, dpo and args.precompute_ref),
    )
    gradients = state.trainable * (2 if args.grad_accum > 1 else 1)  # accumulator + micro-batch gradient

    seqs = args.batch_size // batch_shards // args.grad_accum * (2 if dpo else 1)
    c = 4 if args.dtype == "float32" else 2
    act = activation_bytes(cfg, seqs, args.seq_len, c, TensorSplit.for_mesh(cfg, mesh), remat=args.remat,
                           lora_rank=args.lora.rank, lora_targets=args.lora.targets, lora_dropout=args.lora.dropout,
                           logits_chunk=args.logits_chunk)

    g_layers, g_other = (a + b for a, b in zip(gathered_bytes(frozen, mesh, args.dtype),
                                                gathered_bytes(trainable, mesh, args.dtype)))
    if ref_copy:
        r_layers, r_other = gathered_bytes(trainable, mesh, args.dtype)
        g_layers, g_other = g_layers + r_layers, g_other + r_other
    if args.remat:  # gathered one layer at a time (and the next one prefetched)
        g_layers = g_layers * min(2, cfg.num_hidden_layers) // cfg.num_hidden_layers
    gathered = g_layers + g_other

    per_device = {
        "params_trainable": state.trainable, "params_frozen": state.frozen, "reference_params": state.reference,
        "optimizer": state.optimizer, "gradients": gradients, "batch": state.batch + state.key,
        "activations": act["total"], "activations_layers": act["layers"], "activations_logits": act["logits"],
        "gathered_weights": gathered,
    }
    arguments = state.arguments
    transient = gradients + act["total"] + gathered
    per_device["arguments"] = arguments
    per_device["transient"] = transient
    per_device["total"] = arguments + transient
    return {
        "model": args.model, "model_type": cfg.model_type, "layers": cfg.num_hidden_layers,
        "params": count(trainable) + count(frozen), "trainable_params": count(trainable),
        "objective": args.objective, "batch_size": args.batch_size, "seq_len": args.seq_len,
        "dtype": args.dtype, "remat": args.remat, "logits_chunk": args.logits_chunk,
        "grad_accum": args.grad_accum, "lora_rank": args.lora.rank,
        "devices": math.prod(shape), "mesh": dict(zip(("data", "fsdp", "tensor"), shape)),
        "sequences_per_device": seqs, "per_device": per_device,
        "activation_parts": act["per_layer"],
        "fits": {f"{m:g}": per_device["total"] <= m * GIB * args.usable for m in args.memories},
        "usable": args.usable,
    }


def plan(model: str, **fields) -> dict:
    """``plan("qwen2.5-7b", mesh=MeshConfig(fsdp=8), batch_size=8, seq_len=2048, lora=LoraConfig(rank=16))``:
    per-device bytes as a dict (keys as printed by the CLI; see ``PlanArgs`` for the fields)."""
    return plan_for(dataclasses.replace(PlanArgs(model=model), **fields))


# --------------------------------------------------------------------------- report
def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def _gib(n: int) -> str:
    return f"{n / GIB:10.2f}"


def format_plan(p: dict) -> str:
    """The human-readable table that the CLI prints."""
    d, m = p["per_device"], p["mesh"]
    lora = f"LoRA r={p['lora_rank']}" if p["lora_rank"] > 0 else "full fine-tuning"
    frozen_dtype = p["dtype"] if p["lora_rank"] > 0 else "float32"
    rows = [
        (f"trainable parameters (float32, {p['trainable_params'] / 1e6:,.1f}M)", d["params_trainable"]),
        (f"frozen parameters ({frozen_dtype})", d["params_frozen"]),
    ]
    if d["reference_params"]:
        rows.append((f"DPO reference copy ({p['dtype']})", d["reference_params"]))
    rows += [
        ("optimizer state (AdamW: 2 fp32 moments)", d["optimizer"]),
        ("gradients (float32)" + (", accumulator + micro-batch" if p["grad_accum"] > 1 else ""), d["gradients"]),
        ("batch", d["batch"]),
        (f"activations ({'remat' if p['remat'] else 'no remat'})", d["activations"]),
        (f"  decoder layers ({p['layers']})", d["activations_layers"]),
        ("  logits [B, T, V] and log-softmax" if not p["logits_chunk"] else
         f"  logits [B, {p['logits_chunk']}, V] and log-softmax (chunked)", d["activations_logits"]),
        ("all-gathered weights (FSDP)", d["gathered_weights"]),
    ]
    seqs = p["sequences_per_device"]
    lines = [
        f"{p['model']}: {_count(p['params'])} parameters, {lora}, {p['objective']}, "
        f"batch {p['batch_size']} x {p['seq_len']} tokens, {p['dtype']}"
        + (f", grad_accum {p['grad_accum']}" if p["grad_accum"] > 1 else ""),
        f"mesh data={m['data']} fsdp={m['fsdp']} tensor={m['tensor']} on {p['devices']} devices: "
        f"{seqs} sequence{'s' if seqs != 1 else ''} of {p['seq_len']} per device per micro-batch",
        "",
        f"{'per device':<52}{'GiB':>10}",
    ]
    lines += [f"  {name:<50}{_gib(v)}" for name, v in rows]
    lines.append(f"  {'total':<50}{_gib(d['total'])}")
    fit = [k for k, ok in p["fits"].items() if ok]
    miss = [k for k, ok in p["fits"].items() if not ok]
    lines.append("")
    lines.append(f"fits ({p['usable']:.0%} usable): {', '.join(f'{k} GiB' for k in fit) or 'none'}"
                 + (f"; does not fit: {', '.join(f'{k} GiB' for k in miss)}" if miss else ""))
    return "\n".join(lines)


# A bad mesh (model.sharding raises ValueError naming the mesh field) is a user error here too.
@stage_main(user_errors=(ValueError,))
def main(argv: Sequence[str] | None = None) -> int:
    args = tyro.cli(PlanArgs, args=argv, description=__doc__.split("\n\n")[1].replace("\n", " "))
    p = plan_for(args)
    print(json.dumps(p, indent=2) if args.json else format_plan(p))
    return 0


if __name__ == "__main__":
    run(main)
