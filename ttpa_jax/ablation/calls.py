"""How many arguments each system's calls carry, against SFT's, and the DPO pairs' two sides (no JAX).

Reads the ablation's run directories (``OUT/seed<k>/<system>/eval/<system>.json``: the held-out
predictions turn by turn; ``OUT/seed<k>/<system>/data/pairs.jsonl``: the preference pairs) and counts:

- held out: the tool-call turns where both the system's and the SFT model's output is one parsable
  call, and on how many of them the system's call has fewer (more) arguments than SFT's;
- pairs: the pairs whose chosen and rejected sides are both one call, and on how many the chosen
  side has fewer (more) arguments than the rejected one.

A preference stage that learns "close the arguments object early" shows as many "fewer" and few
"more" in both. ``python -m ttpa_jax.ablate calls`` writes RESULTS/calls.json; the report renders it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ttpa_jax.core.jsonl import read_jsonl
from ttpa_jax.tools.calls import parse, parse_value

BASELINE = "sft"
COUNTS = ("turns", "fewer", "more", "pairs", "chosen_fewer", "chosen_more")


def n_args(output: Any) -> int | None:
    """Arguments of the one call an output holds (model text, or an assistant message with OpenAI
    ``tool_calls``); None when it holds no call, several, or a broken one."""
    if isinstance(output, Mapping):
        output = output.get("tool_calls") or output.get("content")
    result = parse_value(output) if isinstance(output, list) else parse(output)
    return len(result.calls[0]["arguments"]) if result.status == "ok" and len(result.calls) == 1 else None


def rows_args(per_turn: Iterable[Mapping[str, Any]]) -> dict[tuple[str, int], int | None]:
    """(record id, turn) -> arguments of the predicted call, over the tool-call turns of per-turn rows."""
    return {(t["id"], t["turn"]): n_args(t.get("prediction")) for t in per_turn if t.get("kind") == "tool_call"}


def turn_args(eval_file: Path) -> dict[tuple[str, int], int | None]:
    """``rows_args`` of an evaluation file's ``per_turn`` rows."""
    return rows_args(json.loads(eval_file.read_text()).get("per_turn", []))


def compare_turns(system: Mapping[tuple[str, int], int | None], base: Mapping[tuple[str, int], int | None]):
    both = [(system[k], base[k]) for k in system if system[k] is not None and base.get(k) is not None]
    return {"turns": len(both), "fewer": sum(a < b for a, b in both), "more": sum(a > b for a, b in both)}


def compare_pairs(pairs: Iterable[Mapping[str, Any]]):
    sides = [(n_args(p["chosen"][-1]), n_args(p["rejected"][-1])) for p in pairs]
    both = [(c, r) for c, r in sides if c is not None and r is not None]
    return {"pairs": len(both), "chosen_fewer": sum(c < r for c, r in both), "chosen_more": sum(c > r for c, r in both)}


def measure(out: Path, seeds: Iterable[int]) -> dict[str, Any]:
    """{"seeds", "systems": {system: {"per_seed": {seed: counts}, **counts summed over seeds}}}."""
    systems: dict[str, dict[str, Any]] = {}
    done = []
    for seed in seeds:
        root = Path(out) / f"seed{seed}"
        base_eval = root / BASELINE / "eval" / f"{BASELINE}.json"
        if not base_eval.is_file():
            continue
        done.append(seed)
        base = turn_args(base_eval)
        for run in sorted(p for p in root.iterdir() if p.name not in (BASELINE, "zero-shot")):
            eval_file = run / "eval" / f"{run.name}.json"
            if not eval_file.is_file():
                continue
            counts = compare_turns(turn_args(eval_file), base)
            pairs_file = run / "data" / "pairs.jsonl"
            if pairs_file.is_file():
                counts |= compare_pairs(read_jsonl(pairs_file))
            systems.setdefault(run.name, {"per_seed": {}})["per_seed"][str(seed)] = counts
    for entry in systems.values():
        for key in COUNTS:
            values = [c[key] for c in entry["per_seed"].values() if key in c]
            if values:
                entry[key] = sum(values)
    return {"seeds": done, "baseline": BASELINE, "systems": systems}


def lines(calls: Mapping[str, Any] | None, label=lambda s: s, order: tuple[str, ...] = ()) -> list[str]:
    """The report's table (empty without a calls.json); rows in ``order``, then the rest by name."""
    if not calls or not calls.get("systems"):
        return []

    def cell(e, n, k):
        return f"{e[k]} of {e[n]}" if n in e else "–"

    out = ["", "### Call length against SFT's", "",
           f"Tool-call turns of the held-out set where both the system's and SFT's output is one parsable call, and "
           f"how often the system's call has fewer or more arguments; preference pairs whose two sides are both one "
           f"call, and how often the chosen side has fewer or more arguments than the rejected one. Summed over "
           f"seeds {', '.join(map(str, calls['seeds']))} (`python -m ttpa_jax.ablate calls`, from the run directories).",
           "", "| System | Fewer arguments than SFT | More arguments than SFT | Pairs: chosen has fewer | "
           "Pairs: chosen has more |", "|---|---:|---:|---:|---:|"]
    for name in sorted(calls["systems"], key=lambda s: (order.index(s) if s in order else len(order), s)):
        e = calls["systems"][name]
        out.append(f"| {label(name)} | {cell(e, 'turns', 'fewer')} | {cell(e, 'turns', 'more')} | "
                   f"{cell(e, 'pairs', 'chosen_fewer')} | {cell(e, 'pairs', 'chosen_more')} |")
    return out
