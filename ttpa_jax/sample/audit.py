"""The pair audit ``sample`` writes next to its pairs (``<out>.audit.json``) and prints: what the
pairs are, so that a run whose pairs are mostly "gold against some sample" shows it.

What it counts:

- ``pair_kinds``: ``sampled_chosen`` (the chosen side is a model candidate), ``gold_anchored``
  (gold-anchored TPS, ``--tps.anchor gold``), ``gold_chosen`` (the gold completion replaced a best
  candidate below ``--gold-below``); ``pair_sides``: both sides' sources (``greedy_vs_branch``,
  ``branch_vs_branch``, ``sample_vs_sample``, ``gold_vs_<source>``); pairs by turn kind;
- ``divergence``: where the two sides of a pair first differ (``divergence_class``): in the tool
  name, an argument key, an argument value, one side closing the arguments / call where the other
  adds an argument (``close_vs_continue``), an answer turn, or other syntax; also per pair kind;
- ``chosen_longer``: pairs whose chosen completion is longer / shorter / as long as the rejected one;
- where branch points fall (``name``, ``key``, ``value``, ``syntax`` of a call, ``outside`` every
  call, ``answer`` on answer turns), over all branch points and over those of the pairs;
- the score gaps (chosen minus rejected); how many completion tokens the pairs' sides share
  (quartiles and a histogram); every prompt that made no pair, with the reason.

Each pair's ``meta`` carries its ``pair_kind``, ``divergence`` and ``chosen_longer`` (``pair_meta``).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ttpa_jax.sample.pairs import PAIR_KINDS
from ttpa_jax.text.spans import char_locations

GAP_BINS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0 + 1e-9)
PREFIX_BINS = (0, 1, 4, 8, 16, 32, 64, 128)  # shared-prefix histogram: [0], [1, 3], ... [128, inf)
DIVERGENCE = ("tool_name", "key", "value", "close_vs_continue", "answer", "other")
_LOCATION_CLASS = {"name": "tool_name", "key": "key", "value": "value"}
_CLOSES = ("}", "]", "</tool_call>")


def audit_path(out: Path) -> Path:
    """``pairs.jsonl`` -> ``pairs.audit.json`` (next to the pairs)."""
    out = Path(out)
    return out.with_name((out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name) + ".audit.json")


# ----------------------------------------------------------------------------- one pair
def divergence_class(chosen: str, rejected: str, turn_kind: str = "tool_call") -> str:
    """Where the decoded texts of a pair's sides first differ (``DIVERGENCE``).

    ``answer`` for answer turns. Else, at the first differing character (read in the chosen side's
    text; in the rejected side's where the chosen one has ended): ``close_vs_continue`` when, from
    there, one side's next non-space character closes the arguments object or the call (``}``,
    ``]``, ``</tool_call>``) and the other's is the ``,`` before another argument, both in the call's
    syntax; otherwise the location of that character in the call (``spans.char_locations``):
    ``tool_name``, ``key``, ``value``, and ``other`` for the rest (syntax, text outside the calls,
    identical texts).
    """
    if turn_kind == "answer":
        return "answer"
    i = next((j for j, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
    if i == len(chosen) == len(rejected):
        return "other"
    locs = [char_locations(chosen), char_locations(rejected)]
    heads = []
    for text, loc in zip((chosen, rejected), locs):
        j = i + len(text[i:]) - len(text[i:].lstrip())  # the next non-space character
        heads.append((text[j:], loc[j] if j < len(text) else "outside"))
    (c, c_loc), (r, r_loc) = heads
    closes, continues = (lambda t: t.startswith(_CLOSES)), (lambda t: t.startswith(","))
    if c_loc == r_loc == "syntax" and ((closes(c) and continues(r)) or (continues(c) and closes(r))):
        return "close_vs_continue"
    return _LOCATION_CLASS.get(locs[0][i] if i < len(chosen) else locs[1][i], "other")


def pair_meta(tokenizer, chosen_ids: list[int], rejected_ids: list[int], turn_kind: str) -> dict[str, Any]:
    """The audit's per-pair fields: ``divergence`` (``divergence_class`` of the decoded sides, special
    tokens kept) and ``chosen_longer`` (True / False, None when both completions are as long)."""
    texts = [tokenizer.decode(list(ids), skip_special_tokens=False) for ids in (chosen_ids, rejected_ids)]
    n_c, n_r = len(chosen_ids), len(rejected_ids)
    return {"divergence": divergence_class(*texts, turn_kind), "chosen_longer": None if n_c == n_r else n_c > n_r}


# ----------------------------------------------------------------------------- the audit
def _histogram(values: list[float]) -> dict[str, int]:
    # + 1e-9: scores are sums of float weights, so 1.0 - 0.8 must land in [0.2, 0.3)
    counts, _ = np.histogram(np.asarray(values, np.float64) + 1e-9, bins=np.asarray(GAP_BINS))
    labels = [f"[{a:g}, {min(b, 1.0):g}{']' if b > 1 else ')'}" for a, b in zip(GAP_BINS[:-1], GAP_BINS[1:])]
    return dict(zip(labels, counts.tolist()))


def _prefix_stats(shared: list[int]) -> dict[str, Any]:
    """Quartiles and a histogram of shared-prefix lengths (labels ``0``, ``1-3``, ... ``128+``)."""
    edges = list(PREFIX_BINS) + [None]
    labels = [str(a) if b == a + 1 else (f"{a}-{b - 1}" if b is not None else f"{a}+")
              for a, b in zip(edges[:-1], edges[1:])]
    hist = dict.fromkeys(labels, 0)
    for n in shared:
        k = max(i for i, a in enumerate(PREFIX_BINS) if n >= a)
        hist[labels[k]] += 1
    if not shared:
        return {"histogram": hist}
    q1, median, q3 = (float(x) for x in np.percentile(np.asarray(shared, np.float64), [25, 50, 75]))
    return {"min": min(shared), "q1": q1, "median": median, "q3": q3, "max": max(shared), "histogram": hist}


def _counts(values, names=()) -> dict[str, int]:
    """Counts of ``values``: every one of ``names`` (zero included) in that order, then any other, sorted."""
    c = Counter(values)
    return {**{n: c.get(n, 0) for n in names}, **dict(sorted((k, v) for k, v in c.items() if k not in names))}


def build_audit(records: list[dict], prompts: list[dict[str, Any]], skipped: dict[str, int]) -> dict[str, Any]:
    """``records``: the pairs written; ``prompts``: one entry per sampled prompt ``{"id", "turn",
    "kind", "candidates", "distinct", "branch_points", "branch_locations", "pairs", "reason"}``;
    ``skipped``: turns left out before decoding, by reason."""
    metas = [r["meta"] for r in records]
    gaps = [m["chosen_score"] - m["rejected_score"] for m in metas]
    shared = [m["shared_prefix_tokens"] for m in metas]
    no_pair = [{k: p[k] for k in ("id", "turn", "kind", "reason")} for p in prompts if not p["pairs"]]
    longer = Counter({True: "longer", False: "shorter", None: "equal"}[m.get("chosen_longer")] for m in metas)
    kinds = sorted({m["pair_kind"] for m in metas} | set(PAIR_KINDS), key=lambda k: (k not in PAIR_KINDS, k))
    return {
        "pairs": len(records),
        "pair_kinds": _counts((m["pair_kind"] for m in metas), PAIR_KINDS),
        "pair_sides": _counts(m.get("pair_sides", m["pair_kind"]) for m in metas),
        "pairs_by_turn_kind": _counts(m["turn_kind"] for m in metas),
        "chosen_source": _counts(r["chosen_source"] for r in records),
        "divergence": _counts((m.get("divergence", "other") for m in metas), DIVERGENCE),
        "divergence_by_kind": {k: _counts((m.get("divergence", "other") for m in metas if m["pair_kind"] == k),
                                          DIVERGENCE) for k in kinds},
        "chosen_longer": {k: longer.get(k, 0) for k in ("longer", "shorter", "equal")},
        "prompts": len(prompts),
        "prompts_by_kind": _counts(p["kind"] for p in prompts),
        "branch_points": sum(p["branch_points"] for p in prompts),
        "branch_locations": _counts(x for p in prompts for x in p["branch_locations"]),
        "pair_branch_locations": _counts(m["branch_location"] for m in metas if m["branch_location"] is not None),
        "score_gaps": {
            "histogram": _histogram(gaps),
            **({"min": min(gaps), "median": float(np.median(gaps)), "max": max(gaps)} if gaps else {}),
        },
        "shared_prefix_tokens": _prefix_stats(shared),
        "prompts_without_pair": {"count": len(no_pair), "by_reason": _counts(p["reason"] for p in no_pair),
                                 "prompts": no_pair},
        "turns_skipped": dict(sorted(skipped.items())),
    }


def write_audit(path: Path, audit: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(audit, indent=2) + "\n")


def format_audit(a: dict[str, Any]) -> str:
    """The printed summary of an audit."""
    def items(d):
        return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"

    def share(d):
        n = sum(d.values())
        return ", ".join(f"{k} {v} ({100 * v / n:.0f}%)" for k, v in d.items() if v) if n else "none"

    s = a["shared_prefix_tokens"]
    spread = (f"median {s['median']:g} (quartiles {s['q1']:g}-{s['q3']:g}, min {s['min']}, max {s['max']}); "
              if "median" in s else "")
    lines = [
        f"pairs by kind: {share(a['pair_kinds'])} (chosen: {items(a['chosen_source'])}; "
        f"sides: {items(a['pair_sides'])})",
        f"pairs by turn: {items(a['pairs_by_turn_kind'])}",
        f"sides first differ at: {share(a['divergence'])}",
        f"chosen completion longer than rejected: {items(a['chosen_longer'])}",
        f"shared completion prefix (tokens): {spread}{items({k: v for k, v in s['histogram'].items() if v})}",
        f"branch points ({a['branch_points']}) fall in: {items(a['branch_locations'])}; "
        f"in pairs: {items(a['pair_branch_locations'])}",
        f"score gaps: {items(a['score_gaps']['histogram'])}",
        f"prompts without a pair: {a['prompts_without_pair']['count']} of {a['prompts']} "
        f"({items(a['prompts_without_pair']['by_reason'])})",
    ]
    if a["turns_skipped"]:
        lines.append(f"turns left out: {items(a['turns_skipped'])}")
    return "\n".join(lines)
