"""What ``python -m ttpa_jax.export`` takes, and a run's saved config; no JAX is imported here.

``Args`` is the export command line; ``run_config`` reads ``RUN_DIR/config.yaml`` back into the
``TrainConfig`` the run was trained with. ``export.weights`` does the JAX work.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from ttpa_jax.train.config import TrainConfig, from_dict


@dataclasses.dataclass
class Args:
    """Export a training run as a Hugging Face model directory or a PEFT adapter."""

    run: str
    """Run directory written by `python -m ttpa_jax.train`."""
    out: str
    """Output directory."""
    peft: bool = False
    """Write a PEFT LoRA adapter (for the run's base model directory) instead of merged weights."""
    step: int | None = None
    """Checkpoint step to export (default: the latest)."""
    dtype: str | None = None
    """Weight dtype of the merged export (float32 or bfloat16; default: the base model's)."""


def run_config(run_dir: str | Path) -> TrainConfig:
    p = Path(run_dir) / "config.yaml"
    if not p.is_file():
        raise FileNotFoundError(f"{run_dir}: not a training run (no config.yaml)")
    return from_dict(TrainConfig, yaml.safe_load(p.read_text()), where=str(p))
