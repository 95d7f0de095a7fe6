"""``python -m ttpa_jax.ablate``: what TTPA adds, on the demo task, over several seeds.

Systems, all evaluated on the same held-out test set (tools never seen in training) of each seed:

- ``SFT``: supervised fine-tuning on reversed-constructed data;
- ``TL-SFT``: the same with TL-Training's MAE and PKT (w_max 9);
- ``DPO-traj``: SFT, then DPO on trajectory-level pairs (whole samples at temperature 1, ESM-scored);
- ``TTPA``: SFT, then DPO on token-level TPS pairs scored with ESM;
- ``TTPA-fwd``: TTPA with forward (query-first) construction instead of reversed.

Writes ``docs/results.md`` (mean and standard deviation per metric) and ``docs/results.png``, plus
every run under ``--out``. Rerunning continues an interrupted ablation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import tyro

from ttpa_jax.core.cli import run as run_cli, stage_main
from ttpa_jax.experiments import pipeline as P
from ttpa_jax.experiments.pipeline import PipelineConfig

SYSTEMS = ("SFT", "TL-SFT", "DPO-traj", "TTPA", "TTPA-fwd")
METRICS = (("Tool selection", "tool_selection_accuracy"), ("Parameter names", "param_name_accuracy"),
           ("Parameter values", "param_value_accuracy"), ("Return-value parsing", "return_value_accuracy"),
           ("Format validity", "format_validity"), ("ESM score", "esm_score"))


@dataclasses.dataclass
class Args:
    """Run the ablation (5 systems x seeds) and write docs/results.md."""

    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds; each constructs its own data, model and runs."""
    out: Path = Path("runs/ablate")
    """Where every run goes."""
    results: Path = Path("docs/results.md")
    """The results document (a PNG plot is written next to it)."""
    quick: bool = False
    """A few steps per stage (checks the script, not the method)."""
    model: str | None = None
    """Base model (a local HF directory, a FILE.gguf or a base model name such as smollm2-135m-instruct),
    LoRA-trained with the demo's budgets; None trains the tiny Llama 3 preset from scratch."""


def run_seed(base: PipelineConfig) -> dict[str, dict]:
    """All systems for one seed; returns {system: metrics}."""
    out = base.out
    results: dict[str, dict] = {}

    def cached(name, fn):
        path = out / "eval" / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        return fn()

    rev = dataclasses.replace(base, out=out / "reversed")
    train_file, test_file = P.construct_data(rev)
    model = P.base_model(rev, train_file)
    sft = P.run_training(P.sft_config(rev, model, train_file), base.progress)
    results["SFT"] = cached("SFT", lambda: P.evaluate_model(base, sft, test_file, "SFT"))

    tl = dataclasses.replace(rev, out=out / "tl", mae=True, pkt_wmax=9.0)
    tl_model = P.run_training(P.sft_config(tl, model, train_file), base.progress)
    results["TL-SFT"] = cached("TL-SFT", lambda: P.evaluate_model(base, tl_model, test_file, "TL-SFT"))

    for name, mode in (("DPO-traj", "trajectory"), ("TTPA", "tps")):
        cfg = dataclasses.replace(rev, out=out / name, sample_mode=mode)
        pairs = P.sample_pairs(cfg, sft, train_file)
        dpo = P.run_training(P.dpo_config(cfg, sft, pairs), base.progress)
        results[name] = cached(name, lambda dpo=dpo, name=name: P.evaluate_model(base, dpo, test_file, name))

    fwd = dataclasses.replace(base, out=out / "forward", mode="forward")
    fwd_train, _ = P.construct_data(fwd)
    fwd_model = P.base_model(fwd, fwd_train)
    fwd_sft = P.run_training(P.sft_config(fwd, fwd_model, fwd_train), base.progress)
    fwd_pairs = P.sample_pairs(fwd, fwd_sft, fwd_train)
    fwd_dpo = P.run_training(P.dpo_config(fwd, fwd_sft, fwd_pairs), base.progress)
    # the reversed run's held-out set: the same held-out tools (the tool split depends on the seed only)
    results["TTPA-fwd"] = cached("TTPA-fwd", lambda: P.evaluate_model(base, fwd_dpo, test_file, "TTPA-fwd"))
    return results


def summarize(per_seed: dict[int, dict[str, dict]]) -> dict[str, dict[str, tuple[float, float]]]:
    """{system: {metric: (mean, std over seeds)}}; metrics undefined for a seed are left out of it."""
    out = {}
    for system in SYSTEMS:
        out[system] = {}
        for _, key in METRICS:
            values = [r[system][key] for r in per_seed.values() if isinstance(r[system].get(key), (int, float))]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                out[system][key] = (statistics.fmean(values), std)
    return out


def _names(labels: list[str]) -> str:
    bold = [f"**{x}**" for x in labels]
    return bold[0] if len(bold) == 1 else ", ".join(bold[:-1]) + " and " + bold[-1]


def write_results(path: Path, summary, per_seed, args: Args, seconds: float) -> None:
    lines = [
        "# Ablation: what TTPA adds", "",
        "Produced by `python -m ttpa_jax.ablate" + (" --quick" if args.quick else "") + "` "
        f"(seeds {', '.join(map(str, args.seeds))}; {seconds / 60:.0f} minutes on this machine). "
        "Each seed constructs 400 records from the bundled tool library with the offline template generator "
        "(a fifth held out, on tools never seen in training), "
        + (f"LoRA-trains `{args.model}` " if args.model else "trains the tiny Llama 3 preset from scratch ") +
        "and evaluates every system on the same held-out set. Mean ± standard deviation over seeds.", "",
        f"About {PipelineConfig().error_recovery:.0%} of the training records (none of the held-out ones) are "
        "error-recovery episodes (a call the tool refuses with an error, then the corrected call): MAE gives "
        "the failed call zero loss weight, plain SFT learns it like any other call, and sampling makes no "
        "pairs from it.", "",
        "Systems: **SFT** (reversed data); **TL-SFT** (SFT with TL-Training's MAE and PKT, w_max 9); "
        "**DPO-traj** (SFT + DPO on trajectory-level pairs, 4 samples at temperature 1 per prompt); "
        "**TTPA** (SFT + DPO on token-level TPS pairs scored by ESM); **TTPA-fwd** (TTPA on forward, "
        "query-first construction).", "",
        "| Metric | " + " | ".join(SYSTEMS) + " |", "|---|" + "---:|" * len(SYSTEMS),
    ]
    for label, key in METRICS:
        cells = []
        for system in SYSTEMS:
            v = summary[system].get(key)
            cells.append("–" if v is None else f"{v[0]:.3f} ± {v[1]:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    zero = [label for label, key in METRICS
            if all(key in summary[system] and summary[system][key][0] == 0 for system in SYSTEMS)]
    if zero:
        rest = [label for label, key in METRICS
                if label not in zero and any(key in summary[system] for system in SYSTEMS)]
        lines += ["", f"Every system scores 0 on {_names(zero)}. The tiny model, trained from scratch "
                  "on a few hundred records, learns the call format before it learns to copy a tool name it "
                  "never saw in training from the prompt's tool list (parameters count only under the right "
                  "tool) or to carry values from tool results into an answer"
                  + (f"; the systems differ in {_names(rest)}." if rest else ".")]
    lines += ["", f"![per-metric comparison]({path.with_suffix('.png').name})", "",
              "Per-seed values are in `eval/<system>.json` under each seed's run directory "
              f"(`{args.out}/seed<N>/`). This is a tiny model trained for minutes on a CPU: the table shows "
              "what each stage does on this task, not what it does on a 7B model.", ""]
    path.write_text("\n".join(lines))


def plot(path: Path, summary) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(SYSTEMS)
    for i, system in enumerate(SYSTEMS):
        xs = [j + i * width for j in range(len(METRICS))]
        vals = [summary[system].get(k, (math.nan, 0))[0] for _, k in METRICS]
        errs = [summary[system].get(k, (0, 0))[1] for _, k in METRICS]
        ax.bar(xs, vals, width=width, yerr=errs, capsize=2, label=system)
    ax.set_xticks([j + width * (len(SYSTEMS) - 1) / 2 for j in range(len(METRICS))])
    ax.set_xticklabels([label for label, _ in METRICS], fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(ncol=len(SYSTEMS), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def seed_config(args: Args, out: Path, seed: int) -> PipelineConfig:
    if args.quick:
        quick = PipelineConfig.quick(out, seed)
        return quick if args.model is None else dataclasses.replace(quick, model=args.model, sft_lora_rank=8)
    if args.model is not None:
        return PipelineConfig.pretrained(out, args.model, seed, progress=False)
    return PipelineConfig(out=out, seed=seed, progress=False)


@stage_main
def main(argv: Sequence[str] | None = None) -> int:
    args = tyro.cli(Args, args=argv)
    t0 = time.perf_counter()
    per_seed = {}
    for seed in args.seeds:
        P.say(f"\n==== seed {seed}")
        out = args.out / f"seed{seed}"
        base = seed_config(args, out, seed)
        per_seed[seed] = run_seed(base)
    summary = summarize(per_seed)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    plot(args.results.with_suffix(".png"), summary)
    write_results(args.results, summary, per_seed, args, time.perf_counter() - t0)
    print(args.results.read_text())
    return 0


if __name__ == "__main__":
    run_cli(main)
