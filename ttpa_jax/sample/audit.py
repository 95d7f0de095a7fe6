"""The pair audit ``sample`` writes next to its pairs (``<out>.audit.json``) and prints.

What it counts: pairs by kind (``greedy_vs_branch``, ``branch_vs_branch``, ``gold_chosen``,
``sample_vs_sample``) and by turn kind; where branch points fall (``name``, ``key``, ``value``,
``syntax`` of a call, ``outside`` every call, ``answer`` on answer turns), over all branch points
and over those of the pairs; the distribution of score gaps (chosen minus rejected); how many
completion tokens the pairs' sides share; and every prompt that made no pair, with the reason.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

GAP_BINS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0 + 1e-9)


def audit_path(out: Path) -> Path:
    """``pairs.jsonl`` -> ``pairs.audit.json`` (next to the pairs)."""
    out = Path(out)
    return out.with_name((out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name) + ".audit.json")


def _histogram(values: list[float]) -> dict[str, int]:
    # + 1e-9: scores are sums of float weights, so 1.0 - 0.8 must land in [0.2, 0.3)
    counts, _ = np.histogram(np.asarray(values, np.float64) + 1e-9, bins=np.asarray(GAP_BINS))
    labels = [f"[{a:g}, {min(b, 1.0):g}{']' if b > 1 else ')'}" for a, b in zip(GAP_BINS[:-1], GAP_BINS[1:])]
    return dict(zip(labels, counts.tolist()))


def build_audit(records: list[dict], prompts: list[dict[str, Any]], skipped: dict[str, int]) -> dict[str, Any]:
    """``records``: the pairs written; ``prompts``: one entry per sampled prompt ``{"id", "turn",
    "kind", "candidates", "distinct", "branch_points", "branch_locations", "pairs", "reason"}``;
    ``skipped``: turns left out before decoding, by reason."""
    metas = [r["meta"] for r in records]
    gaps = [m["chosen_score"] - m["rejected_score"] for m in metas]
    shared = [m["shared_prefix_tokens"] for m in metas]
    no_pair = [{k: p[k] for k in ("id", "turn", "kind", "reason")} for p in prompts if not p["pairs"]]
    return {
        "pairs": len(records),
        "pair_kinds": dict(sorted(Counter(m["pair_kind"] for m in metas).items())),
        "pairs_by_turn_kind": dict(sorted(Counter(m["turn_kind"] for m in metas).items())),
        "chosen_source": dict(sorted(Counter(r["chosen_source"] for r in records).items())),
        "prompts": len(prompts),
        "prompts_by_kind": dict(sorted(Counter(p["kind"] for p in prompts).items())),
        "branch_points": sum(p["branch_points"] for p in prompts),
        "branch_locations": dict(sorted(Counter(x for p in prompts for x in p["branch_locations"]).items())),
        "pair_branch_locations": dict(sorted(Counter(m["branch_location"] for m in metas
                                                     if m["branch_location"] is not None).items())),
        "score_gaps": {
            "histogram": _histogram(gaps),
            **({"min": min(gaps), "median": float(np.median(gaps)), "max": max(gaps)} if gaps else {}),
        },
        "shared_prefix_tokens": ({"min": min(shared), "median": float(np.median(shared)), "max": max(shared)}
                                 if shared else {}),
        "prompts_without_pair": {"count": len(no_pair),
                                 "by_reason": dict(sorted(Counter(p["reason"] for p in no_pair).items())),
                                 "prompts": no_pair},
        "turns_skipped": dict(sorted(skipped.items())),
    }


def write_audit(path: Path, audit: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(audit, indent=2) + "\n")


def format_audit(a: dict[str, Any]) -> str:
    """The printed summary of an audit."""
    def items(d):
        return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"

    lines = [
        f"pairs by kind: {items(a['pair_kinds'])} (chosen: {items(a['chosen_source'])})",
        f"pairs by turn: {items(a['pairs_by_turn_kind'])}",
        f"branch points ({a['branch_points']}) fall in: {items(a['branch_locations'])}; "
        f"in pairs: {items(a['pair_branch_locations'])}",
        f"score gaps: {items(a['score_gaps']['histogram'])}",
        f"prompts without a pair: {a['prompts_without_pair']['count']} of {a['prompts']} "
        f"({items(a['prompts_without_pair']['by_reason'])})",
    ]
    if a["turns_skipped"]:
        lines.append(f"turns left out: {items(a['turns_skipped'])}")
    return "\n".join(lines)
