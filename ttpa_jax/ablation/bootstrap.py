"""Turn-level statistics of the evidence experiment: paired bootstrap intervals stratified by seed.

Input: the per-turn rows each run writes beside its result (``<system>/seed<k>.turns.json``, rows
``{"id", "turn", "kind", "score", "errors", "return_values", ...}``). A metric is a value per turn
(``TURN_METRICS``): on call turns the ESM score and whether the tool, the parameter names, and the
whole call are right; on answer turns whether the return values were parsed (turns the rule cannot
judge are left out).

``paired_bootstrap(a, b)`` compares two systems on the turns both scored, seed by seed: the point
estimate is the mean over all paired turns of ``a - b``; each of ``resamples`` draws resamples the
turns of every seed with replacement (so each seed keeps its number of turns: stratified by seed),
and the interval is the 2.5th and 97.5th percentile of the drawn means. ``detectable`` is the
smallest true difference the design finds with 80% power at a two-sided 5% level, 2.8 times the
bootstrap standard error (normal approximation). Pure numpy; deterministic for a given ``seed``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

Row = Mapping[str, Any]
Turns = Mapping[int, list[Row]]  # seed -> rows


def _call(row: Row) -> bool:
    return row.get("kind") == "tool_call" and "score" in row


def _errors(row: Row) -> Mapping[str, int]:
    return row.get("errors") or {}


def _selected(row: Row) -> float:
    e = _errors(row)
    return float(not (e.get("format") or e.get("tool_hallucination") or e.get("wrong_tool")))


def _named(row: Row) -> float:
    return float(_selected(row) and not _errors(row).get("param_name"))


def _exact(row: Row) -> float:
    return float(not any(_errors(row).values()))


def _parsed(row: Row) -> float | None:
    reason = (row.get("return_values") or {}).get("reason")
    if row.get("kind") != "answer" or reason in (None, "unjudged"):
        return None
    return float(reason == "ok")


# (label, key, value of one row or None when the row does not count)
TURN_METRICS: tuple[tuple[str, str, Callable[[Row], float | None]], ...] = (
    ("ESM score (call turns, primary)", "esm_score", lambda r: float(r["score"]) if _call(r) else None),
    ("Tool selection", "tool_selection", lambda r: _selected(r) if _call(r) else None),
    ("Parameter names", "param_names", lambda r: _named(r) if _call(r) else None),
    ("Parameter values (exact call)", "param_values", lambda r: _exact(r) if _call(r) else None),
    ("Return-value parsing", "return_values", _parsed),
)
PRIMARY = "esm_score"


@dataclasses.dataclass(frozen=True)
class Interval:
    mean: float  # mean over the paired turns of a - b
    low: float  # 95% bootstrap interval
    high: float
    detectable: float  # smallest difference found with 80% power (2.8 standard errors)
    turns: int  # paired turns, all seeds
    per_seed: dict[int, float]  # mean difference per seed

    @property
    def verdict(self) -> str:
        return "better" if self.low > 0 else "worse" if self.high < 0 else "no difference shown"


def values(rows: list[Row], metric: Callable[[Row], float | None]) -> dict[tuple[str, int], float]:
    """``{(id, turn): value}`` of the rows the metric counts."""
    out = {}
    for r in rows:
        v = metric(r)
        if v is not None:
            out[(str(r["id"]), int(r["turn"]))] = v
    return out


def paired_differences(a: Turns, b: Turns, metric: Callable[[Row], float | None]) -> dict[int, np.ndarray]:
    """Per seed both systems ran: ``a - b`` on the turns both have a value for, in a fixed order."""
    out = {}
    for seed in sorted(set(a) & set(b)):
        va, vb = values(a[seed], metric), values(b[seed], metric)
        keys = sorted(set(va) & set(vb))
        if keys:
            out[seed] = np.array([va[k] - vb[k] for k in keys], np.float64)
    return out


def paired_bootstrap(diffs: Mapping[int, np.ndarray], resamples: int = 5000, seed: int = 0) -> Interval | None:
    """The interval of the mean paired difference, resampling turns within each seed (module doc)."""
    diffs = {s: d for s, d in diffs.items() if d.size}
    if not diffs:
        return None
    rng = np.random.default_rng(seed)
    total = sum(d.size for d in diffs.values())
    sums = np.zeros(resamples)
    for d in diffs.values():
        idx = rng.integers(0, d.size, size=(resamples, d.size))
        sums += d[idx].sum(axis=1)
    means = sums / total
    point = float(sum(d.sum() for d in diffs.values()) / total)
    low, high = np.percentile(means, [2.5, 97.5])
    return Interval(point, float(low), float(high), float(2.8 * means.std(ddof=1)), total,
                    {s: float(d.mean()) for s, d in diffs.items()})


def read_turns(results_dir: Path) -> dict[str, dict[int, list[Row]]]:
    """``{system: {seed: rows}}`` from ``results_dir/<system>/seed<k>.turns.json``."""
    out: dict[str, dict[int, list[Row]]] = {}
    for path in sorted(Path(results_dir).glob("*/seed*.turns.json")):
        try:
            rows = json.loads(path.read_text())
            seed = int(path.name[len("seed"):].split(".")[0])
        except (json.JSONDecodeError, ValueError) as e:
            raise ValueError(f"{path}: not a per-turn file ({e})") from None
        if not isinstance(rows, list):
            raise ValueError(f"{path}: not a per-turn file (expected a JSON list of rows)")
        out.setdefault(path.parent.name, {})[seed] = rows
    return out


def seed_means(turns: Turns, metric: Callable[[Row], float | None]) -> dict[int, float]:
    """The metric's mean per seed (over the turns it counts)."""
    out = {}
    for seed, rows in sorted(turns.items()):
        v = list(values(rows, metric).values())
        if v:
            out[seed] = float(np.mean(v))
    return out


def compare(turns: Mapping[str, Turns], system: str, baselines: list[str], resamples: int = 5000
            ) -> dict[str, dict[str, Interval]]:
    """``{baseline: {metric key: Interval of system - baseline}}`` for every metric both have."""
    out: dict[str, dict[str, Interval]] = {}
    for base in baselines:
        if system not in turns or base not in turns:
            continue
        row = {}
        for _, key, metric in TURN_METRICS:
            iv = paired_bootstrap(paired_differences(turns[system], turns[base], metric), resamples)
            if iv is not None:
                row[key] = iv
        out[base] = row
    return out
