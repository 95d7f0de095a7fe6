"""``python -m ttpa_jax.ablate``: what each method does to a real model, on held-out tools and BFCL.

Systems (``ablation.runs.SYSTEMS``): zero-shot; SFT; TL-SFT (MAE + PKT, w_max 9); SFT + DPO on
trajectory-level pairs; TTPA (SFT + DPO on TPS pairs scored by ESM); TTPA on forward-constructed
data; SFT + GRPO (ESM reward); SFT + PPO (TL-Training's error-category reward). Same constructed
data, budgets and evaluation for all; seeds 0, 1, 2. Every (system, seed) is its own resumable run
writing ``docs/results/<system>/seed<k>.json``; nothing is committed (commit those files).

Commands::

    python -m ttpa_jax.ablate [--seeds 0 1 2] [--systems ttpa sft ...] [--scale default|paper|quick]
                              [--quick] [--model DIR|FILE.gguf|NAME] [--bfcl-limit N]
    python -m ttpa_jax.ablate epsilon   TTPA at epsilon 0.05, 0.1, 0.2, 0.3 (pairs, score gaps, scores)
    python -m ttpa_jax.ablate weights   TTPA with the default ESM weights and two others
    python -m ttpa_jax.ablate leakage   query leakage of reversed vs forward construction
    python -m ttpa_jax.ablate calls     arguments per call against SFT's, and in the DPO pairs (run dirs)
    python -m ttpa_jax.ablate report    docs/results.md's ablation section + plots, from the JSONs only
    python -m ttpa_jax.ablate estimate  the time the runs would take on the 2-core machine
    python -m ttpa_jax.ablate recipe    does TTPA help? step 1: pick TTPA's recipe on seed 0's validation split
    python -m ttpa_jax.ablate evidence  step 2: zero-shot, SFT, TTPA, trajectory DPO, SFT+ on 3 seeds
                                        (``ablation.evidence``; ``report`` writes its section too)

``--quick`` (the tiny model from scratch, a few steps) writes under ``--out`` only, never docs/.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import tyro

from ttpa_jax.ablation import calls as ablate_calls
from ttpa_jax.ablation import evidence, evidence_report
from ttpa_jax.ablation import report as ablate_doc
from ttpa_jax.ablation import runs as R
from ttpa_jax.ablation import scale as ablate_scale
from ttpa_jax.ablation import stats as ablate_stats
from ttpa_jax.ablation.leakage import measure
from ttpa_jax.ablation.systems import BY_NAME, EPSILONS, EVIDENCE_NAMES, SYSTEMS, WEIGHT_SETS, System
from ttpa_jax.core.cli import run as run_cli
from ttpa_jax.core.cli import stage_main
from ttpa_jax.core.errors import ConfigError

COMMANDS = ("run", "epsilon", "weights", "leakage", "calls", "report", "estimate", "recipe", "evidence")
EVIDENCE_RESULTS = Path("docs/results/evidence")  # the CPU-sized evidence runs (and the recipe they picked)
WEIGHT_LABELS = {"flat": "flat (every error 0.5)", "binary": "binary (every error 1.0)"}


@dataclasses.dataclass
class RunArgs:
    """Run (or resume) the ablation's (system, seed) runs; each writes RESULTS/<system>/seed<k>.json."""

    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds; each constructs its own data and trains its own models."""
    systems: tuple[str, ...] = tuple(s.name for s in SYSTEMS)
    """Systems to run (names as in docs/results/<system>/)."""
    scale: Literal["default", "paper", "quick"] = "default"
    """Sizes: default (about 4.4 hours on 2 CPU cores, measured), paper (thousands of records, a 7B
    --model, GPU/TPU), quick (tiny model from scratch, checks the script)."""
    quick: bool = False
    """Shorthand for --scale quick."""
    model: str | None = None
    """Base model: local HF directory, FILE.gguf or a base model name (default scale: smollm2-135m-instruct)."""
    out: Path | None = None
    """Run directories (default runs/ablate/<scale>)."""
    results_dir: Path | None = None
    """Per-run JSON files (default docs/results, docs/results/paper for --scale paper, OUT/results for quick)."""
    bfcl_limit: int | None = -1
    """BFCL entries per category (-1: the scale's own; 0: skip BFCL; None: all)."""
    report: bool = True
    """Regenerate the results document (the ablation section) after the runs."""
    doc: Path | None = None
    """Results document (default docs/results.md; OUT/results.md for quick)."""
    progress: bool = False
    """Progress bars of every stage."""


@dataclasses.dataclass
class EvidenceArgs:
    """Does TTPA help? ``recipe``: pick TTPA's recipe on seed 0's validation split; ``evidence``: run the
    five systems; each (system, seed) writes RESULTS/<system>/seed<k>.json and its per-turn rows."""

    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds (``evidence``; ``recipe`` always uses seed 0)."""
    systems: tuple[str, ...] = EVIDENCE_NAMES
    """Systems to run (``evidence``), in this order: TTPA's DPO steps set trajectory DPO's and SFT+'s."""
    recipe: str | None = None
    """TTPA's recipe (a name in ``experiments.pipeline.RECIPES``); default: the one RESULTS/recipe.json chose."""
    follow_ups: bool = False
    """``recipe``: also score the follow-up recipes (``experiments.pipeline.FOLLOW_UP_RECIPES``, tried after
    the evidence runs), recorded apart in recipe.json and never chosen."""
    size: int = 1
    """Every size of the experiment times this (records, SFT steps, TPS records, held-out and validation
    records; BFCL on every non-live entry): 10 is the run for a GPU or TPU machine. Its files go to
    docs/results/evidence-x<size>; TTPA's recipe is the one docs/results/evidence/recipe.json chose."""
    quick: bool = False
    """The same stages on a tiny model from scratch (checks the code in minutes; writes under --out)."""
    model: str | None = None
    """Base model (default smollm2-135m-instruct)."""
    out: Path | None = None
    """Run directories (OUT/seed<k>/<system>/; default runs/evidence, runs/evidence-x<size> with --size)."""
    results_dir: Path | None = None
    """Per-run files (default docs/results/evidence, docs/results/evidence-x<size> with --size; OUT/results
    with --quick)."""
    progress: bool = False
    """Progress bars of every stage."""


@dataclasses.dataclass
class ReportArgs:
    """Regenerate the ablation section of the results document and its plots from the per-run JSONs."""

    results_dir: Path = Path("docs/results")
    """The per-run files, RESULTS/<system>/seed<k>.json (and RESULTS/leakage.json)."""
    doc: Path = Path("docs/results.md")
    """The document whose ablation section is replaced (other sections are kept); plots go next to it."""
    evidence_dir: Path | None = None
    """The evidence experiment's files (recipe.json, <system>/seed<k>.json and .turns.json; default
    RESULTS/evidence); when the directory exists its section of the document is replaced too."""


@dataclasses.dataclass
class LeakageArgs:
    """Construct reversed and forward data with the same settings and count the queries that leak names."""

    seeds: tuple[int, ...] = (0, 1, 2)
    num: int = 300
    """Records constructed per mode and seed."""
    out: Path = Path("runs/ablate/leakage")
    results_dir: Path = Path("docs/results")
    """Writes RESULTS/leakage.json."""
    generator: Literal["template", "openai"] = "template"
    """Construction generator (openai: the endpoint from OPENAI_BASE_URL / OPENAI_API_KEY)."""
    openai_model: str = "gpt-4o-mini"
    """openai: the model name sent to the endpoint."""


@dataclasses.dataclass
class CallsArgs:
    """Count the arguments of each system's held-out calls against SFT's, and of the DPO pairs' sides, from the
    run directories (which are not committed) into RESULTS/calls.json (which is)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    out: Path = Path("runs/ablate/default")
    """The ablation's run directories (OUT/seed<k>/<system>/)."""
    results_dir: Path = Path("docs/results")
    """Writes RESULTS/calls.json."""


def resolve(args: RunArgs) -> tuple[ablate_scale.Scale, Path, Path, Path]:
    name = "quick" if args.quick else args.scale
    out = args.out or Path("runs/ablate") / name
    scale = ablate_scale.make_scale(name, args.model, out, args.progress, args.bfcl_limit)
    results = args.results_dir or {"quick": out / "results", "paper": Path("docs/results/paper")}.get(name,
                                                                                                   Path("docs/results"))
    doc = args.doc or (out / "results.md" if name == "quick" else Path("docs/results.md"))
    return scale, out, results, doc


def systems_of(names: Sequence[str]) -> list[System]:
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ConfigError(f"--systems: unknown system {unknown[0]!r} (known: {', '.join(BY_NAME)})")
    return [BY_NAME[n] for n in names]


def run(args: RunArgs, systems: list[System]) -> list[Path]:
    scale, out, results, doc = resolve(args)
    est = ablate_scale.format_estimate(ablate_scale.estimate(scale, systems, len(args.seeds)))
    R.say(f"ablation ({scale.name}): {len(systems)} systems x {len(args.seeds)} seeds"
          + (f"; estimated {est} on 2 CPU cores" if scale.name == "default" and args.model is None else ""))
    written = []
    for seed in args.seeds:
        seed_run = R.SeedRun(scale, out, seed)
        for system in systems:
            written.append(R.run_system(seed_run, system, results))
    if args.report:
        report(ReportArgs(results_dir=results, doc=doc))
    return written


def epsilon_systems(default: float) -> list[System]:
    """TTPA at each sweep value; the scale's own epsilon is the main TTPA run."""
    return [BY_NAME["ttpa" if e == default else f"ttpa-eps{e:g}"] for e in EPSILONS]


def report(args: ReportArgs) -> str:
    runs = ablate_stats.read_runs(args.results_dir)
    leak_path = args.results_dir / "leakage.json"
    leak = json.loads(leak_path.read_text()) if leak_path.is_file() else None
    calls_path = args.results_dir / "calls.json"
    calls = json.loads(calls_path.read_text()) if calls_path.is_file() else None
    ttpa = next(iter(runs.get("ttpa", {}).values()), None)
    default_eps = ttpa["config"]["pipeline"]["epsilon"] if ttpa else ablate_scale.make_scale(
        "default", None, Path("runs")).pipeline.epsilon
    eps = [(f"epsilon {e:g}" + (" (TTPA's)" if e == default_eps else ""), s.name)
           for e, s in zip(EPSILONS, epsilon_systems(default_eps), strict=True)]
    weights = [("default weights", "ttpa")] + [(WEIGHT_LABELS[w], f"ttpa-w-{w}") for w in WEIGHT_SETS]
    est_scale = ablate_scale.make_scale("default", None, Path("runs"))
    estimate = ablate_scale.format_estimate(ablate_scale.estimate(est_scale, list(SYSTEMS), 3))
    default_runs = {s: {k: r for k, r in per.items() if r.get("scale") == "default"} for s, per in runs.items()}
    fitted = ablate_scale.fitted_unit_costs(default_runs, est_scale)
    doc = Path(args.doc)
    plot_name = doc.with_name(doc.stem + "_ablation.png")
    section = ablate_doc.section(
        runs, estimate=estimate + " for 3 seeds, from the unit costs in `ttpa_jax/ablation/scale.py`",
        leak=leak, plots=[plot_name.name], command=f"python -m ttpa_jax.ablate report --results-dir {args.results_dir}",
        eps_settings=eps, weight_settings=weights, calls=calls, fitted=fitted)
    if any(s in runs for s in ablate_doc.ORDER):
        doc.parent.mkdir(parents=True, exist_ok=True)
        ablate_doc.plot(plot_name, runs, ablate_stats.HELDOUT + ablate_stats.BFCL)
    old = doc.read_text() if doc.is_file() else ""
    new = ablate_doc.splice(old, section)
    evidence_dir = Path(args.evidence_dir or Path(args.results_dir) / "evidence")
    if evidence_dir.is_dir():
        evidence_section = evidence_report.section(evidence_dir)
        new = evidence_report.splice(new, evidence_section)
        section = section + "\n" + evidence_section
    doc.write_text(new)
    R.say(f"wrote the ablation section of {doc}")
    return section


def leakage(args: LeakageArgs) -> Path:
    result = measure(args.seeds, args.num, args.out, generator=args.generator,
                     openai_model=args.openai_model)
    path = args.results_dir / "leakage.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    R.say(f"wrote {path}")
    return path


def evidence_main(command: str, args: EvidenceArgs) -> None:
    """``recipe`` or ``evidence``: run (or resume) and print the per-run files written."""
    if args.size < 1:
        raise ValueError(f"--size {args.size}: expected a positive whole number")
    name = "evidence-quick" if args.quick else "evidence" if args.size == 1 else f"evidence-x{args.size}"
    out = args.out or Path("runs") / ("evidence" if args.quick else name)
    scale = ablate_scale.make_scale(name, args.model, out, args.progress)
    results = args.results_dir or (out / "results" if args.quick else Path("docs/results") / name)
    if command == "recipe":
        print(evidence.run_recipe(scale, out, results, args.follow_ups))
        return
    # a larger run takes the recipe picked at the CPU size unless it picked its own
    picked = results if args.size == 1 or (results / evidence.RECIPE_FILE).is_file() else EVIDENCE_RESULTS
    for path in evidence.run_evidence(scale, out, results, args.seeds, args.systems,
                                      evidence.chosen_recipe(picked, args.recipe)):
        print(path)


@stage_main(user_errors=(ValueError,))
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    prog = f"python -m ttpa_jax.ablate {command}"
    if command in ("recipe", "evidence"):
        evidence_main(command, tyro.cli(EvidenceArgs, args=argv, prog=prog))
    elif command == "report":
        print(report(tyro.cli(ReportArgs, args=argv, prog=prog)))
    elif command == "leakage":
        leakage(tyro.cli(LeakageArgs, args=argv, prog=prog))
    elif command == "calls":
        args = tyro.cli(CallsArgs, args=argv, prog=prog)
        path = args.results_dir / "calls.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        counts = ablate_calls.measure(args.out, args.seeds)
        if not counts["seeds"]:
            raise ConfigError(f"--out {args.out}: no seed<k>/{ablate_calls.BASELINE}/eval/{ablate_calls.BASELINE}.json for "
                              f"seeds {', '.join(map(str, args.seeds))}: run the ablation's SFT system first")
        path.write_text(json.dumps(counts, indent=2) + "\n")
        R.say(f"wrote {path}")
    else:
        args = tyro.cli(RunArgs, args=argv, prog=prog)
        scale, *_ = resolve(args)
        if command == "epsilon":
            systems = epsilon_systems(scale.pipeline.epsilon)
        elif command == "weights":
            systems = systems_of(["ttpa"] + [f"ttpa-w-{w}" for w in WEIGHT_SETS])
        else:
            systems = systems_of(args.systems)
        if command == "estimate":
            print(ablate_scale.format_estimate(ablate_scale.estimate(scale, systems, len(args.seeds))))
            return 0
        for path in run(args, systems):
            print(path)
    return 0


if __name__ == "__main__":
    run_cli(main)
