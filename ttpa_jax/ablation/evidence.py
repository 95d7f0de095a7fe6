"""Does TTPA help? The evidence experiment: the recipe picked on validation, then five systems x three
seeds scored turn by turn, with paired bootstrap intervals (``python -m ttpa_jax.ablate recipe``,
``evidence``, ``report``).

1. ``recipe``: on seed 0, SFT and each TTPA recipe of ``experiments.pipeline.RECIPES`` are scored on the
   validation records (training tools, never trained on). The recipe with the highest mean ESM score
   on the validation call turns is chosen (ties: the earlier in ``RECIPES``); the candidates, their
   scores and the rule go to ``RESULTS/recipe.json``. With ``--follow-ups`` the recipes of
   ``FOLLOW_UP_RECIPES`` (tried after the evidence runs) are scored the same way and recorded apart
   (``follow_ups``), never chosen.
2. ``evidence``: per seed, zero-shot, SFT, TTPA (the chosen recipe), trajectory DPO (the same loss
   settings and steps) and SFT+ (the SFT model, SFT on the preference prompts' gold turns for as many
   steps as TTPA's DPO) are run and scored on the held-out tools (and BFCL); each (system, seed) writes
   ``RESULTS/<system>/seed<k>.json`` and its per-turn rows, resumable like the ablation's runs.
3. ``report`` writes the evidence section of docs/results.md from those files alone (``doc``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ttpa_jax.ablation import runs as R
from ttpa_jax.ablation.scale import Scale
from ttpa_jax.ablation.systems import (
    FOLLOW_UP_ARMS,
    RECIPE_BASELINE,
    RECIPE_FOLLOW_UPS,
    RECIPE_SYSTEMS,
    System,
    evidence_systems,
)
from ttpa_jax.core.errors import ConfigError
from ttpa_jax.experiments.pipeline import FOLLOW_UP_RECIPES, RECIPES, NoPairs

RECIPE_FILE = "recipe.json"
RULE = ("highest mean ESM score on the validation call turns of seed 0 (the last validation_records training "
        "records, never trained on); ties: the earlier recipe")


def recipe_candidates(results: Path) -> dict[str, dict[str, Any]]:
    """``{name: per-run result}`` of the recipe runs written so far (``RESULTS/recipe/<system>/seed0.json``)."""
    out = {}
    for s in (RECIPE_BASELINE, *RECIPE_SYSTEMS, *RECIPE_FOLLOW_UPS):
        path = R.result_path(Path(results) / "recipe", s.name, 0)
        if path.is_file():
            out[s.name] = json.loads(path.read_text())
    return out


def choose(candidates: dict[str, dict[str, Any]]) -> str | None:
    """The recipe name the rule picks among the finished candidate runs (None: none finished)."""
    scored = [(c["heldout"].get("esm_score") or 0.0, -i, name[len("recipe-"):])
              for i, name in enumerate(s.name for s in RECIPE_SYSTEMS) if (c := candidates.get(name))]
    return max(scored)[2] if scored else None


def _row(name: str, c: dict[str, Any]) -> dict[str, Any]:
    """One recipe run's line in ``recipe.json``."""
    h = c["heldout"]
    return {**{k: h.get(k) for k in ("esm_score", "tool_selection_accuracy", "param_name_accuracy",
                                       "param_value_accuracy", "scored_tool_call_turns", "return_value_accuracy",
                                       "answer_turn_tool_call_rate")},
            "pairs": c.get("data", {}).get("pairs"), "dpo_steps": c.get("budgets", {}).get("dpo", {}).get("steps"),
            "settings": {**RECIPES, **FOLLOW_UP_RECIPES}.get(name[len("recipe-"):], {})}


def run_recipe(scale: Scale, out: Path, results: Path, follow_ups: bool = False) -> Path:
    """Run (or resume) the recipe candidates on seed 0's validation split and write the choice; with
    ``follow_ups`` also the follow-up recipes, recorded apart and never chosen."""
    if not scale.validation_records:
        raise ConfigError(f"--scale {scale.name}: no validation records to pick a recipe on (use evidence)")
    seed_run = R.SeedRun(scale, out, 0)
    no_pairs = {}
    for system in (RECIPE_BASELINE, *RECIPE_SYSTEMS, *(RECIPE_FOLLOW_UPS if follow_ups else ())):
        try:
            R.run_system(seed_run, system, Path(results) / "recipe")
        except NoPairs as e:  # a recipe whose sampling finds no pair cannot be chosen
            no_pairs[system.name] = str(e)
            R.say(f"recipe {system.name}: {e}")
    candidates = recipe_candidates(results)
    chosen = choose(candidates)
    later = {s.name for s in RECIPE_FOLLOW_UPS}
    table = {name: _row(name, c) for name, c in candidates.items() if name not in later}
    follow = {name: _row(name, c) for name, c in candidates.items() if name in later}
    path = Path(results) / RECIPE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    R.write_json(path, {"chosen": chosen, "rule": RULE, "scale": scale.name, "seed": 0,
                    "validation_records": scale.validation_records, "candidates": table, "no_pairs": no_pairs,
                    **({"follow_ups": follow} if follow else {})})
    R.say(f"recipe: {chosen} ({RULE}); wrote {path}")
    return path


def chosen_recipe(results: Path, given: str | None) -> str:
    if given is not None:
        if given not in RECIPES:
            raise ConfigError(f"--recipe {given!r}: unknown (known: {', '.join(RECIPES)})")
        return given
    path = Path(results) / RECIPE_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: missing; run `python -m ttpa_jax.ablate recipe` first (or give --recipe)")
    chosen = json.loads(path.read_text()).get("chosen")
    if chosen not in RECIPES:
        raise ConfigError(f"{path}: 'chosen' is {chosen!r}, not one of {', '.join(RECIPES)}")
    return chosen


def run_evidence(scale: Scale, out: Path, results: Path, seeds: tuple[int, ...], names: tuple[str, ...],
                 recipe: str) -> list[Path]:
    """Run (or resume) the evidence systems (and follow-up arms) named in ``names`` for each seed; TTPA's
    DPO steps set trajectory DPO's and SFT+'s, a follow-up arm takes its own."""
    systems = evidence_systems(recipe) + FOLLOW_UP_ARMS
    by_name = {s.name: s for s in systems}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(f"--systems: {unknown[0]!r} is not an evidence system ({', '.join(by_name)})")
    budget: System = by_name["ttpa"]
    written = []
    for seed in seeds:
        seed_run, own_steps = R.SeedRun(scale, out, seed, budget=budget), R.SeedRun(scale, out, seed)
        written += [R.run_system(own_steps if s in FOLLOW_UP_ARMS else seed_run, s, results)
                    for s in systems if s.name in names]
    return written
