"""``python -m ttpa_jax.export --run RUN_DIR --out DIR [--peft] [--step N]``

Turns a training run into something Hugging Face loads: merged weights as a model directory
(tokenizer included), or with ``--peft`` a PEFT LoRA adapter directory (``adapter_config.json`` +
``adapter_model.safetensors``) for the run's base model directory. The settings are in
``export.settings``, the JAX work in ``export.weights``; importing this module loads no JAX.
"""

from __future__ import annotations

from collections.abc import Sequence

import tyro

from ttpa_jax.core.cli import run, stage_main
from ttpa_jax.export.settings import Args

# Export checks (--peft on a run from a preset, a run without adapters) raise ValueError naming the flag.
@stage_main(user_errors=(ValueError,))
def main(argv: Sequence[str] | None = None) -> int:
    args = tyro.cli(Args, args=argv, prog="python -m ttpa_jax.export")
    from ttpa_jax.export.weights import export  # JAX: loaded once the command line is good

    export(args)
    return 0


if __name__ == "__main__":
    run(main)
