"""Preference pairs from scored candidates (TTPA's pair selection), on token ids.

Candidates are de-duplicated on their token ids (the first of equal sequences is kept). chosen =
the best-scoring candidate (ties: the earliest), error-free or not, as in the paper; when its score
is below ``gold_below`` and a gold completion is given, the gold one is chosen instead (the public
TTPA code uses 0.8). rejected = every other distinct candidate scoring at least ``margin`` below the
chosen side. A pair never has equal token ids on both sides.

TPS candidates share the greedy prefix up to their branch token, so two TPS candidates are equal
before the earlier of their branch positions and differ at it: that token is the pair's branch token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence

GOLD = -1  # the chosen side's index when it is the gold completion
_EPS = 1e-9  # scores are sums of float weights: 1.0 - 0.8 must count as a 0.2 margin


@dataclasses.dataclass(frozen=True)
class Pair:
    chosen: int  # candidate index, or GOLD
    rejected: int  # candidate index
    chosen_score: float
    rejected_score: float


def select_pairs(candidates: Sequence[tuple[Hashable, float]], margin: float, gold: Hashable | None = None,
                 gold_below: float = 0.8) -> list[Pair]:
    """Pairs over ``candidates = [(token ids as a tuple, score)]``; ``gold``: the gold completion's
    ids (None: never chosen). Deterministic: rejected sides keep their input order."""
    if margin <= 0:
        raise ValueError(f"margin must be positive, got {margin}")
    first: dict[Hashable, int] = {}
    for i, (key, _) in enumerate(candidates):
        first.setdefault(key, i)
    distinct = sorted(first.values())
    if not distinct:
        return []
    best = max(distinct, key=lambda i: (candidates[i][1], -i))
    if gold is not None and candidates[best][1] < gold_below - _EPS:
        chosen, chosen_key, chosen_score = GOLD, gold, 1.0
    else:
        chosen, chosen_key, chosen_score = best, candidates[best][0], candidates[best][1]
    return [Pair(chosen, i, chosen_score, candidates[i][1]) for i in distinct
            if i != chosen and candidates[i][0] != chosen_key and chosen_score - candidates[i][1] >= margin - _EPS]


def pair_kind(chosen_source: str, rejected_source: str) -> str:
    """``gold_chosen``, ``greedy_vs_branch``, ``branch_vs_branch`` or ``sample_vs_sample``."""
    if chosen_source == "gold":
        return "gold_chosen"
    sources = {chosen_source, rejected_source}
    if sources == {"greedy", "branch"}:
        return "greedy_vs_branch"
    return f"{rejected_source}_vs_{rejected_source}" if len(sources) == 1 else "_vs_".join(sorted(sources))


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def no_pair_reason(n_candidates: int, n_distinct: int, n_branch_points: int, mode: str) -> str:
    """Why a prompt made no pair: ``no_branch_point`` (TPS found nowhere to branch and the greedy
    call scored well), ``duplicate_candidates`` (every candidate had the same tokens) or
    ``scores_within_margin`` (distinct candidates, none a margin below the best)."""
    if mode == "tps" and n_branch_points == 0:
        return "no_branch_point"
    if n_distinct <= 1 < n_candidates or n_distinct <= 1:
        return "duplicate_candidates"
    return "scores_within_margin"
