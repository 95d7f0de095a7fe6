"""``python -m ttpa_jax.export --run RUN_DIR --out DIR [--format hf|peft|gguf] [--step N]``

Turns a training run into something Hugging Face loads: merged weights as a model directory
(tokenizer included), or with ``--format peft`` a PEFT LoRA adapter directory (``adapter_config.json`` +
``adapter_model.safetensors``) for the run's base model directory; or into what llama.cpp and Ollama
load: ``--format gguf --out FILE.gguf [--gguf-type f32|f16|bf16|q8_0]``, from a run or from a merged
model directory (``--model DIR``). The settings are in ``export.settings``, the JAX work in
``export.weights``, the GGUF file in ``export.to_gguf``; importing this module loads no JAX, and
``--model DIR --format gguf`` runs without it.
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
    if args.model is not None:
        from ttpa_jax.export.to_gguf import write_gguf  # numpy + gguf only: loaded once the command line is good
        from ttpa_jax.model.base_models import resolve_model

        out = write_gguf(resolve_model(args.model), args.out, args.gguf_type)
        print(f"exported {args.model} to {out} (GGUF, {args.gguf_type})")
        return 0
    from ttpa_jax.export.weights import export  # JAX: loaded once the command line is good

    export(args)
    return 0


if __name__ == "__main__":
    run(main)
