"""``make demo`` / ``python -m ttpa_jax.demo``: the whole method on the bundled tiny default.

Constructs tool-use data with the offline template generator (held-out test set on tools never seen
in training), builds a tiny Llama 3 model from scratch (BPE tokenizer trained on the data, a chat
template with tools, optionally a language-model stage on the training text), SFTs it, samples token-level preference pairs (TPS) scored with ESM, trains
DPO with LoRA, evaluates the SFT and DPO models on the held-out set and prints the fine-grained
table. Writes RUN_DIR/report.md and RUN_DIR/report.png. Rerunning continues an interrupted run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import tyro

from ttpa_jax.core.cli import run as run_cli, stage_main
from ttpa_jax.experiments import pipeline as P
from ttpa_jax.experiments.pipeline import PipelineConfig


@dataclasses.dataclass
class Args:
    """Run the end-to-end demo (about 6 minutes on 2 CPU cores)."""

    out: Path = Path("runs/demo")
    """Run directory: everything the demo makes goes here."""
    seed: int = 0
    """Seed of every stage."""
    quick: bool = False
    """A few steps per stage: checks the pipeline end to end in about two minutes."""


def run(cfg: PipelineConfig) -> dict:
    """All stages; returns {"results": {system: metrics}, "report": path, "seconds": {stage: s}}."""
    from ttpa_jax.evaluate.report import read_metrics, write_report

    seconds: dict[str, float] = {}

    def stage(name, fn, *a):
        t0 = time.perf_counter()
        P.say(f"\n== {name}")
        out = fn(*a)
        seconds[name] = time.perf_counter() - t0
        return out

    train_file, test_file = stage("construct", P.construct_data, cfg)
    base = stage("tiny model", P.base_model, cfg, train_file)
    sft_model = stage("sft", P.run_training, P.sft_config(cfg, base, train_file), cfg.progress)
    pairs = stage("sample (TPS + ESM)", P.sample_pairs, cfg, sft_model, train_file)
    dpo_model = stage("dpo", P.run_training, P.dpo_config(cfg, sft_model, pairs), cfg.progress)
    results = {
        "SFT": stage("evaluate sft", P.evaluate_model, cfg, sft_model, test_file, "sft"),
        "TTPA (SFT + TPS/ESM DPO)": stage("evaluate dpo", P.evaluate_model, cfg, dpo_model, test_file, "dpo"),
    }
    notes = [f"Run directory `{cfg.out}`, seed {cfg.seed}, preset {cfg.preset}, {cfg.num} constructed records; "
             f"language-model stage {cfg.base_steps} steps, SFT {cfg.sft_steps} steps, DPO {cfg.dpo_steps} steps.",
             "Stage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()) + "."]
    report = write_report(cfg.out, results, {"SFT": read_metrics(cfg.out / "sft"), "DPO": read_metrics(cfg.out / "dpo")}, notes)
    return {"results": results, "report": report, "seconds": seconds}


@stage_main
def main(argv: Sequence[str] | None = None) -> int:
    args = tyro.cli(Args, args=argv)
    from ttpa_jax.evaluate.evaluator import format_table

    cfg = PipelineConfig.quick(args.out, args.seed) if args.quick else PipelineConfig(out=args.out, seed=args.seed)
    t0 = time.perf_counter()
    out = run(cfg)
    print("\n" + format_table(out["results"]))
    print(f"\nreport: {out['report']} (plot: {out['report'].with_suffix('.png')}); total {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    run_cli(main)
