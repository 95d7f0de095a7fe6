"""``python -m ttpa_jax.train sft|dpo --model DIR|PRESET --data FILE --out RUN_DIR [flags]``

Fine-tunes with SFT or DPO, LoRA (default for dpo) or full (``--lora.rank 0``). Re-running the same
command on the same ``--out`` resumes from the latest checkpoint. With no arguments it runs the DPO
stage of the demo on the demo's files (run ``make demo`` first). ``--help`` on each subcommand lists
every field; ``--config configs/NAME.yaml`` supplies defaults.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from ttpa_jax.jsonl import DataError
    from ttpa_jax.train_config import parse_cli

    cfg = parse_cli(argv)
    from ttpa_jax.distributed import maybe_initialize
    from ttpa_jax.trainer import TrainingDiverged, train

    maybe_initialize(cfg.dist.coordinator, cfg.dist.num_processes, cfg.dist.process_id)
    try:
        summary = train(cfg)
    except (DataError, TrainingDiverged, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    m = summary["metrics"]
    if m:
        shown = ", ".join(f"{k} {m[k]:.4f}" for k in ("loss", "rewards/accuracies", "rewards/margins") if k in m)
        print(f"step {summary['step']}/{summary['steps']}: {shown}; run directory {summary['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
