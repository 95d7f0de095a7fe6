"""Preference pairs from scored candidates (TTPA's pair selection), on token ids.

Candidates are de-duplicated on their token ids (the first of equal sequences is kept). chosen =
the best-scoring candidate (ties: the earliest), error-free or not, as in the paper; when its score
is below ``gold_below`` and a gold completion is given, the gold one is chosen instead (the public
TTPA code uses 0.8). rejected = every other distinct candidate scoring at least ``margin`` below the
chosen side. A pair never has equal token ids on both sides.

TPS candidates share the greedy prefix up to their branch token, so two TPS candidates are equal
before the earlier of their branch positions and differ at it: that token is the pair's branch token.

Gold-anchored candidates (``--tps.anchor gold``, this project's option, not the paper's) are gold
prefixes with the model's own alternative token and continuation: each pair's chosen side is the
gold completion, and a candidate is rejected only when it scores at least ``margin`` below the gold
side's 1.0 (``select_anchored``), so an equivalent alternative is not pushed down.

Pair kinds (``pair_kind``): ``sampled_chosen`` (the chosen side is a model candidate),
``gold_anchored`` (a gold-anchored pair), ``gold_chosen`` (the gold completion replaced a best
candidate below ``gold_below``). ``pair_sides`` names both sides' sources (``greedy_vs_branch``,
``branch_vs_branch``, ``sample_vs_sample``, ``gold_vs_<source>``).
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


def select_anchored(candidates: Sequence[tuple[Hashable, float]], margin: float, gold: Hashable) -> list[Pair]:
    """Gold-anchored pairs over ``candidates = [(token ids as a tuple, score)]``: the gold completion
    (score 1.0) against every distinct candidate, other than the gold ids, at least ``margin`` below it."""
    if margin <= 0:
        raise ValueError(f"margin must be positive, got {margin}")
    first: dict[Hashable, int] = {}
    for i, (key, _) in enumerate(candidates):
        first.setdefault(key, i)
    return [Pair(GOLD, i, 1.0, candidates[i][1]) for i in sorted(first.values())
            if candidates[i][0] != gold and 1.0 - candidates[i][1] >= margin - _EPS]


PAIR_KINDS = ("sampled_chosen", "gold_anchored", "gold_chosen")


def pair_kind(chosen_source: str, rejected_source: str) -> str:
    """``sampled_chosen``, ``gold_anchored`` or ``gold_chosen`` (``PAIR_KINDS``)."""
    if rejected_source == "anchored":
        return "gold_anchored"
    return "gold_chosen" if chosen_source == "gold" else "sampled_chosen"


def pair_sides(chosen_source: str, rejected_source: str) -> str:
    """Both sides' sources: ``gold_vs_<rejected>``, ``greedy_vs_branch``, ``branch_vs_branch`` or
    ``sample_vs_sample``."""
    if chosen_source == "gold":
        return f"gold_vs_{rejected_source}"
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


def no_pair_reason(n_candidates: int, n_distinct: int, n_branch_points: int, mode: str, anchored: bool = False) -> str:
    """Why a prompt made no pair: ``no_branch_point`` (TPS found nowhere to branch and the greedy
    call scored well), ``duplicate_candidates`` (every candidate had the same tokens) or
    ``scores_within_margin`` (distinct candidates, none a margin below the best; gold-anchored: no
    branch a margin below the gold completion; ``branches_cut_by_stop``: every branch ended by a stop
    string before its branch token)."""
    if mode == "tps" and n_branch_points == 0:
        return "no_branch_point"
    if anchored:
        return "scores_within_margin" if n_candidates else "branches_cut_by_stop"
    if n_distinct <= 1 < n_candidates or n_distinct <= 1:
        return "duplicate_candidates"
    return "scores_within_margin"
