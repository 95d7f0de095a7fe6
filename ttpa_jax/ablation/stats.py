"""The ablation's statistics, from the per-run JSON files alone (pure functions, no JAX).

A per-run file (``docs/results/<system>/seed<k>.json``, written by ``ablation.runs``) holds one
(system, seed)'s metrics: ``heldout`` (fine-grained metrics on the held-out bundled tools) and
``bfcl`` (the official checker's per-category accuracies and leaderboard columns). ``flat_metrics``
turns one into ``{metric key: value}``; ``summarize`` gives mean and sample standard deviation
(ddof 1) over seeds; ``paired`` compares TTPA with a baseline seed by seed: the mean of the
per-seed differences and their sample standard deviation, and whether the mean difference exceeds
two of those standard deviations (``above noise``), does not (``within noise``), or cannot be
judged (fewer than two seeds with both values).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# (label, key of flat_metrics); the held-out rows first, then BFCL's columns
HELDOUT = (("Tool selection", "heldout/tool_selection_accuracy"),
           ("Parameter names", "heldout/param_name_accuracy"),
           ("Parameter values", "heldout/param_value_accuracy"),
           ("Return-value parsing", "heldout/return_value_accuracy"),
           ("Format validity", "heldout/format_validity"),
           ("ESM score", "heldout/esm_score"))
ERROR_TYPES = ("format", "tool_hallucination", "wrong_tool", "param_name", "param_type", "param_value")
ERRORS = tuple((f"Errors per call turn: {t}", f"heldout/errors/{t}") for t in ERROR_TYPES)
BFCL = (("BFCL non-live overall", "bfcl/Non-Live Overall Acc"), ("BFCL simple", "bfcl/Simple AST"),
        ("BFCL multiple", "bfcl/Multiple AST"), ("BFCL parallel", "bfcl/Parallel AST"),
        ("BFCL parallel multiple", "bfcl/Parallel Multiple AST"), ("BFCL irrelevance", "bfcl/Irrelevance Detection"),
        ("BFCL ESM score", "bfcl/esm_score"))
METRICS = HELDOUT + ERRORS + BFCL
LOWER_IS_BETTER = frozenset(key for _, key in ERRORS)


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def flat_metrics(run: Mapping[str, Any]) -> dict[str, float]:
    """``{key: value}`` of one per-run file; undefined metrics (no turn of that kind) are left out.
    Error counts are divided by the scored tool-call turns (errors per turn)."""
    out: dict[str, float] = {}
    held = run.get("heldout") or {}
    for _, key in HELDOUT:
        v = _num(held.get(key.split("/", 1)[1]))
        if v is not None:
            out[key] = v
    n = held.get("scored_tool_call_turns") or 0
    for t in ERROR_TYPES:
        c = _num((held.get("errors") or {}).get(t))
        if n and c is not None:
            out[f"heldout/errors/{t}"] = c / n
    bfcl = run.get("bfcl") or {}
    for column, value in (bfcl.get("leaderboard") or {}).items():
        v = _num((value or {}).get("display_accuracy"))
        if v is not None:
            out[f"bfcl/{column}"] = v
    v = _num((bfcl.get("esm") or {}).get("esm_score"))
    if v is not None:
        out["bfcl/esm_score"] = v
    return out


def read_runs(results_dir: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """``{system: {seed: run}}`` from ``results_dir/<system>/seed<k>.json``; a file that is not valid
    JSON raises naming it."""
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted(Path(results_dir).glob("*/seed*.json")):
        if not re.fullmatch(r"seed\d+\.json", path.name):  # seed<k>.turns.json: the per-turn rows
            continue
        try:
            run = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(run, dict) or "system" not in run or "seed" not in run:
            raise ValueError(f"{path}: not a per-run result (needs 'system' and 'seed')")
        runs.setdefault(str(run["system"]), {})[int(run["seed"])] = run
    return runs


def mean_std(values: Iterable[float]) -> tuple[float, float | None, int]:
    """(mean, sample std or None for one value, n)."""
    v = list(values)
    if not v:
        raise ValueError("mean_std of no values")
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else None), len(v)


def summarize(runs: Mapping[int, Mapping[str, Any]]) -> dict[str, tuple[float, float | None, int]]:
    """One system's ``{key: (mean, std, seeds)}`` over its seeds."""
    per_seed = [flat_metrics(r) for r in runs.values()]
    keys = dict.fromkeys(k for m in per_seed for k in m)
    return {k: mean_std(m[k] for m in per_seed if k in m) for k in keys}


@dataclass(frozen=True)
class Paired:
    """TTPA minus a baseline on one metric, over the seeds both have."""

    mean: float
    std: float | None
    seeds: int
    verdict: str  # "above noise" | "within noise" | "one seed"

    @property
    def better(self) -> bool | None:
        """Whether TTPA is better (None when the difference is 0)."""
        return None if self.mean == 0 else self.mean > 0


def bar_p_value(seeds: int) -> float:
    """Two-sided p-value of a paired t-test whose mean difference is exactly two sample standard
    deviations over ``seeds`` seeds: what the "above noise" bar amounts to (t = 2 sqrt(n), n - 1 degrees
    of freedom; about 0.22 for 2 seeds, 0.07 for 3, 0.01 for 5)."""
    df, t = seeds - 1, 2 * math.sqrt(seeds)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    n = 2000  # Simpson's rule over [0, t] of the t density
    h = t / n
    f = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
    area = h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))
    return max(0.0, 1 - 2 * area)


def paired(a: Mapping[int, Mapping[str, Any]], b: Mapping[int, Mapping[str, Any]], key: str) -> Paired | None:
    """``a`` minus ``b`` on ``key`` seed by seed (None when no seed has both). Errors per turn are
    negated so that a positive difference always means ``a`` is better."""
    sign = -1.0 if key in LOWER_IS_BETTER else 1.0
    diffs = []
    for seed in sorted(set(a) & set(b)):
        x, y = flat_metrics(a[seed]).get(key), flat_metrics(b[seed]).get(key)
        if x is not None and y is not None:
            diffs.append(sign * (x - y))
    if not diffs:
        return None
    mean, std, n = mean_std(diffs)
    if std is None:
        return Paired(mean, None, n, "one seed")
    return Paired(mean, std, n, "above noise" if abs(mean) > 2 * std else "within noise")


def compare(runs: Mapping[str, Mapping[int, Mapping[str, Any]]], system: str,
            metrics: Iterable[tuple[str, str]] = METRICS) -> dict[str, dict[str, Paired]]:
    """``{baseline: {key: Paired}}`` of ``system`` against every other system present."""
    out: dict[str, dict[str, Paired]] = {}
    for other in runs:
        if other == system or system not in runs:
            continue
        row = {key: p for _, key in metrics if (p := paired(runs[system], runs[other], key)) is not None}
        if row:
            out[other] = row
    return out
