"""Model settings that a command line takes, defined once and free of JAX: the LoRA adapters.

``LoraConfig`` is nested into ``train`` (``--lora.rank``, ``--lora.alpha``, ...), ``plan`` and the
experiments; ``model.lora`` applies it. Importing this module loads no JAX, so a CLI's ``--help``
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
