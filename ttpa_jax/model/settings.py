"""Model settings that a command line takes, defined once and free of JAX: the LoRA adapters and the
sharding rules.

``LoraConfig`` is nested into ``train`` (``--lora.rank``, ``--lora.alpha``, ...), ``plan`` and the
experiments; ``model.lora`` applies it. ``ShardingRules`` is nested into ``train`` (``--sharding.embed
tensor``, or ``sharding:`` in a YAML config) and recorded in the run's config; ``model.sharding``
applies it. Importing this module loads no JAX, so a CLI's ``--help``
and the memory planner's settings stay light.
"""

from __future__ import annotations

import dataclasses

from ttpa_jax.core.errors import ConfigError

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters. rank 0 means full fine-tuning (no adapters, every parameter trains)."""

    rank: int = 8
    """Adapter rank r; 0 disables LoRA and trains all weights."""
    alpha: float = 16.0
    """Scale numerator: adapters are scaled by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the adapter input during training."""
    targets: tuple[str, ...] = ALL_TARGETS
    """Projections that get adapters (any of q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)."""

    def check(self) -> None:
        """Raise ``ConfigError`` naming ``lora.targets`` when it lists a projection that does not exist."""
        bad = sorted(set(self.targets) - set(ALL_TARGETS))
        if bad:
            raise ConfigError(f"lora.targets: unknown projection(s) {bad}; choose from {list(ALL_TARGETS)}")


MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """Which mesh axes ("data", "fsdp", "tensor") shard each logical axis of the parameters and
    activations; an empty list replicates it. A dimension that does not divide by its mesh axes is
    replicated. Two logical axes of one array may not map to the same mesh axis (``model.sharding``
    raises naming the array's axes)."""

    vocab: tuple[str, ...] = ("tensor",)
    """Vocabulary rows of the embedding and the LM head."""
    embed: tuple[str, ...] = ("fsdp",)
    """The model dimension of every weight (FSDP)."""
    q_heads: tuple[str, ...] = ("tensor",)
    """Query heads of q_proj / o_proj."""
    kv_heads: tuple[str, ...] = ("tensor",)
    """Key/value heads of k_proj / v_proj."""
    mlp: tuple[str, ...] = ("tensor",)
    """MLP width."""
    norm: tuple[str, ...] = ()
    """RMSNorm scales."""
    lora_rank: tuple[str, ...] = ()
    """The rank dimension of LoRA adapters."""
    batch: tuple[str, ...] = ("data", "fsdp")
    """Activations and batches: the batch dimension."""
    seq: tuple[str, ...] = ()
    """Activations: the sequence dimension."""
    act_embed: tuple[str, ...] = ()
    """Activations: the model dimension."""
    act_heads: tuple[str, ...] = ("tensor",)
    """Activations: query heads."""
    act_kv_heads: tuple[str, ...] = ("tensor",)
    """Activations: key/value heads."""
    act_mlp: tuple[str, ...] = ("tensor",)
    """Activations: MLP width."""
    act_vocab: tuple[str, ...] = ("tensor",)
    """Activations: logits over the vocabulary."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            v = () if v is None else (v,) if isinstance(v, str) else tuple(v)  # YAML: a name, a list or null
            object.__setattr__(self, f.name, v)
            bad = [a for a in v if a not in MESH_AXES]
            if bad or len(set(v)) < len(v):
                raise ConfigError(f"sharding.{f.name}: {list(v)} must name distinct mesh axes from {list(MESH_AXES)}")

    def table(self) -> dict[str, tuple[str, ...]]:
        """logical axis -> mesh axes."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
