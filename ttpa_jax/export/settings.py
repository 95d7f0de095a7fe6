"""What ``python -m ttpa_jax.export`` takes, and a run's saved config; no JAX is imported here.

``Args`` is the export command line; ``run_config`` reads ``RUN_DIR/config.yaml`` back into the
settings the run was trained with (its method's ``RunArgs`` subclass). ``export.weights`` does the
JAX work, ``export.to_gguf`` writes GGUF files (numpy only).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from ttpa_jax.core.errors import ConfigError
from ttpa_jax.train.config import RunArgs
from ttpa_jax.train.methods import read_run_config


@dataclasses.dataclass
class Args:
    """Export a training run (or a merged model directory) as a Hugging Face model directory, a PEFT
    adapter, or a GGUF file for llama.cpp / Ollama."""

    out: str
    """Output directory (--format hf or peft), or the .gguf file (--format gguf)."""
    run: str | None = None
    """Run directory written by `python -m ttpa_jax.train`."""
    format: Literal["hf", "peft", "gguf"] = "hf"
    """hf: merged weights as a Hugging Face model directory; peft: a LoRA adapter for the run's base;
    gguf: one GGUF file in llama.cpp's layout, tokenizer and tool-aware chat template in its metadata."""
    model: str | None = None
    """Instead of --run (with --format gguf): a merged Hugging Face model directory, FILE.gguf or base
    model name to convert."""
    gguf_type: Literal["f32", "f16", "bf16", "q8_0"] = "f16"
    """--format gguf: type of the 2-D weights (norms and biases stay f32; q8_0 rows whose length is
    not a multiple of 32 are written f16)."""
    peft: bool = False
    """Same as --format peft (kept for scripts written before --format)."""
    step: int | None = None
    """Checkpoint step to export (default: the latest)."""
    dtype: str | None = None
    """Weight dtype of the merged export (float32 or bfloat16; default: the base model's)."""

    def __post_init__(self):
        if self.peft:
            self.format = "peft"
        if (self.run is None) == (self.model is None):
            raise ConfigError("give exactly one of --run RUN_DIR or --model DIR")
        if self.model is not None and self.format != "gguf":
            raise ConfigError("--model converts a merged model directory and needs --format gguf "
                              "(a run is exported with --run)")
        if self.format == "gguf" and not self.out.endswith(".gguf"):
            raise ConfigError(f"--out {self.out}: a GGUF export is one file; name it FILE.gguf")


def run_config(run_dir: str | Path) -> RunArgs:
    p = Path(run_dir) / "config.yaml"
    if not p.is_file():
        raise FileNotFoundError(f"{run_dir}: not a training run (no config.yaml)")
    return read_run_config(p)
