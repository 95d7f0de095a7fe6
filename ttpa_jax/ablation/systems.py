"""The systems the ablation compares, and the TTPA recipes the evidence experiment chooses among.

Two experiments share the run machinery (``runs``):

* the **ablation** (``SYSTEMS`` + ``FOLLOW_UPS``, the earlier budget: TPS on 6 records, 6 DPO steps):
  what each method of the framework does, eight systems;
* the **evidence** experiment (``EVIDENCE``): does TTPA help? Zero-shot, SFT, SFT+ (the SFT model
  trained on the gold turns of the preference prompts for as many steps as TTPA's DPO), trajectory
  DPO and TTPA with the same DPO recipe and steps. The TTPA recipe is picked on seed 0 on a
  validation split of the training tools (``experiments.pipeline.RECIPES``, ``python -m ttpa_jax.ablate recipe``),
  never on the held-out set.

Pure data: no JAX.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from ttpa_jax.experiments.pipeline import FOLLOW_UP_RECIPES, RECIPES

# Alternative ESM weights for the sensitivity check (the default is tools.esm.ErrorWeights()).
WEIGHT_SETS: dict[str, dict[str, float]] = {
    "flat": {t: 0.5 for t in ("format", "tool_hallucination", "wrong_tool", "param_name", "param_type", "param_value")},
    "binary": {t: 1.0 for t in ("format", "tool_hallucination", "wrong_tool", "param_name", "param_type", "param_value")},
}
EPSILONS = (0.05, 0.1, 0.2, 0.3)


@dataclasses.dataclass(frozen=True)
class System:
    name: str
    label: str
    kind: Literal["zero-shot", "sft", "sft-plus", "dpo", "rl"]
    construction: Literal["reversed", "forward"] = "reversed"
    tl: bool = False
    sample_mode: Literal["tps", "trajectory"] = "tps"
    epsilon: float | None = None
    weights: str | None = None
    rl: Literal["grpo", "ppo"] | None = None
    reward: str = ""
    recipe: tuple[tuple[str, Any], ...] = ()
    """Pipeline settings this system changes (``PipelineConfig`` fields), e.g. a TTPA recipe."""
    runs_as: str | None = None
    """The run directory of its training stages when another system's are the same (seed 0's TTPA
    is the chosen recipe's run, scored on the test set instead of the validation set)."""
    eval_split: Literal["test", "validation"] = "test"
    """Where it is scored: the held-out test tools, or the validation records of the training tools
    (recipe selection; no BFCL)."""


SYSTEMS = (
    System("zero-shot", "zero-shot", "zero-shot"),
    System("sft", "SFT", "sft"),
    System("tl-sft", "TL-SFT", "sft", tl=True),
    System("dpo-traj", "SFT + DPO (trajectory)", "dpo", sample_mode="trajectory"),
    System("ttpa", "TTPA", "dpo"),
    System("ttpa-fwd", "TTPA (forward data)", "dpo", construction="forward"),
    System("grpo", "SFT + GRPO (ESM)", "rl", rl="grpo", reward="esm"),
    System("ppo", "SFT + PPO (TL reward)", "rl", rl="ppo", reward="tl"),
)
FOLLOW_UPS = tuple(System(f"ttpa-eps{e:g}", f"TTPA, epsilon {e:g}", "dpo", epsilon=e) for e in EPSILONS) + tuple(
    System(f"ttpa-w-{w}", f"TTPA, {w} ESM weights", "dpo", weights=w) for w in WEIGHT_SETS)
BY_NAME = {s.name: s for s in SYSTEMS + FOLLOW_UPS}

def _recipe_system(name: str, recipe: dict[str, Any], label: str) -> System:
    return System(f"recipe-{name}", label, "dpo", recipe=tuple(sorted(recipe.items())), eval_split="validation")


RECIPE_SYSTEMS = tuple(_recipe_system(name, r, f"TTPA recipe {name}") for name, r in RECIPES.items())
RECIPE_FOLLOW_UPS = tuple(_recipe_system(name, r, f"TTPA recipe {name} (follow-up)")
                          for name, r in FOLLOW_UP_RECIPES.items())
RECIPE_BASELINE = System("recipe-sft", "SFT (validation)", "sft", eval_split="validation")


def evidence_systems(recipe: str) -> tuple[System, ...]:
    """The evidence experiment's five systems with TTPA's ``recipe``; trajectory DPO takes the same
    loss settings (its sampling has no anchor). Order matters: TTPA's step count sets the budget of
    trajectory DPO and SFT+, so it runs before them."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown TTPA recipe {recipe!r} (known: {', '.join(RECIPES)})")
    loss = tuple(sorted(RECIPES[recipe].items()))
    traj = tuple((k, v) for k, v in loss if k != "tps_anchor")
    return (System("zero-shot", "zero-shot", "zero-shot"),
            System("sft", "SFT", "sft"),
            System("ttpa", f"TTPA ({recipe})", "dpo", recipe=loss, runs_as=f"recipe-{recipe}"),
            System("dpo-traj", "SFT + DPO (trajectory)", "dpo", sample_mode="trajectory", recipe=traj),
            System("sft-plus", "SFT+ (equal steps)", "sft-plus"))


EVIDENCE_NAMES = ("zero-shot", "sft", "ttpa", "dpo-traj", "sft-plus")
# Arms tried after the evidence runs (``--systems ttpa-<recipe>``): a follow-up recipe as TTPA on the held-out
# set, trained in its validation run's directory, with its own DPO steps (one pass over its own pairs).
FOLLOW_UP_ARMS = tuple(System(f"ttpa-{name}", f"TTPA ({name}, follow-up)", "dpo", recipe=tuple(sorted(r.items())),
                              runs_as=f"recipe-{name}") for name, r in FOLLOW_UP_RECIPES.items())
FOLLOW_UP_NAMES = tuple(s.name for s in FOLLOW_UP_ARMS)
