"""``make demo``: the end-to-end pipeline on the bundled tiny default.

Stages that exist so far: build the tiny Llama 3 preset, export it as a Hugging Face directory,
load it back and check the logits agree.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import tyro


@dataclasses.dataclass
class Args:
    """Run the end-to-end demo on the bundled tiny default."""

    out: Path = Path("runs/demo")
    """Run directory: everything the demo makes goes here."""
    preset: str = "tiny-llama3"
    """Architecture preset for the model trained from scratch."""


def main(args: Args) -> None:
    import ttpa_jax

    model = ttpa_jax.init_model(args.preset, seed=0)
    out = ttpa_jax.save_pretrained(model, args.out / "model")
    back = ttpa_jax.load_pretrained(out)
    ids = jnp.arange(12, dtype=jnp.int32)[None] % model.config.vocab_size
    diff = float(np.abs(np.asarray(model(ids)) - np.asarray(back(ids))).max())
    print(f"built {args.preset}, exported to {out}, reloaded: max logit difference {diff:.2e}")


if __name__ == "__main__":
    main(tyro.cli(Args))
