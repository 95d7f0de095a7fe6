"""``python -m ttpa_jax.train sft|dpo --model DIR|PRESET --data FILE --out RUN_DIR [flags]``

Fine-tunes with SFT or DPO, LoRA (default for dpo) or full (``--lora.rank 0``). Re-running the same
command on the same ``--out`` resumes from the latest checkpoint. With no arguments it runs the DPO
stage of the demo (``pipeline.dpo_config``) on the files ``make demo`` wrote under runs/demo.
``--help`` on each subcommand lists every field; ``--config configs/NAME.yaml`` supplies defaults.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from ttpa_jax.core.jsonl import DataError
    from ttpa_jax.train.config import parse_cli

    argv = sys.argv[1:] if argv is None else argv
    cfg = demo_dpo_stage() if not argv else parse_cli(argv)
    if cfg is None:
        return 1
    from ttpa_jax.model.distributed import maybe_initialize
    from ttpa_jax.train.trainer import TrainingDiverged, train

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


def demo_dpo_stage():
    """The DPO stage of ``make demo`` on the files the demo wrote, or None (with a message) without them."""
    from pathlib import Path

    from ttpa_jax.experiments.pipeline import PipelineConfig, dpo_config

    demo = PipelineConfig()
    model, pairs = demo.out / "sft-model", demo.out / "data" / "pairs.jsonl"
    missing = [str(p) for p in (model, pairs) if not Path(p).exists()]
    if missing:
        print(f"error: no arguments runs the demo's DPO stage, which needs {' and '.join(missing)}: "
              "run `make demo` first, or see `python -m ttpa_jax.train --help`", file=sys.stderr)
        return None
    print(f"no arguments: running the demo's DPO stage ({pairs} on {model} -> {demo.out / 'dpo'})")
    return dpo_config(demo, model, pairs)


if __name__ == "__main__":
    sys.exit(main())
