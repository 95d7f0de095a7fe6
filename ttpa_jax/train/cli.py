"""``python -m ttpa_jax.train sft|dpo|orpo|grpo|ppo --model DIR|PRESET --data FILE --out RUN_DIR [flags]``

Fine-tunes with the chosen method (``train.methods``), LoRA (the default, rank 8) or full (``--lora.rank 0``). Re-running the same
command on the same ``--out`` resumes from the latest checkpoint. ``--help`` on each subcommand lists
its fields; ``--config configs/NAME.yaml`` supplies defaults. With no arguments it prints the usage
and exits 2. Errors a user causes print one line and exit 2 (``core.cli``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ttpa_jax.core.cli import EXIT_USER_ERROR, run, stage_main
from ttpa_jax.core.errors import UserError
from ttpa_jax.train.methods import parse_cli, usage


# The trainer checks some settings against the data and devices as it starts (a preset without
# --tokenizer, a batch that does not divide the mesh) and raises ValueError naming the flag.
@stage_main(user_errors=(ValueError,))
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(usage(), file=sys.stderr)
        return EXIT_USER_ERROR
    cfg = parse_cli(argv)
    # Imported once the command line is known to be good, so that --help and a bad flag load no JAX.
    from ttpa_jax.model.distributed import maybe_initialize
    from ttpa_jax.train.loop import TrainingDiverged, train  # deferred: keeps this module JAX-free

    maybe_initialize(cfg.dist.coordinator, cfg.dist.num_processes, cfg.dist.process_id)
    try:
        summary = train(cfg, progress=cfg.progress)
    except TrainingDiverged as e:  # a learning rate or data problem the user has to fix
        raise UserError(str(e)) from None
    m = summary["metrics"]
    if m:
        shown = ", ".join(f"{k} {m[k]:.4f}" for k in ("loss", "rewards/accuracies", "rewards/margins", "reward", "kl")
                          if k in m)
        print(f"step {summary['step']}/{summary['steps']}: {shown}; run directory {summary['run_dir']}")
    return 0


if __name__ == "__main__":
    run(main)
