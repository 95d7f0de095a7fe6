"""TPS's branching rule, in one place: where a greedy decode branches, and into which tokens.

A greedy step may be a branch point when

1. it is **eligible**: on a tool-call turn inside a tool-call span of the decoded text
   (``call_steps``; ``--tps.branch-in anywhere``: any step), on an answer turn any step;
2. it does not emit an EOS id; and
3. it has an **alternative**: a top-``top_k`` token other than the greedy one, not EOS, with
   probability at least ``min_alt_prob`` (``alternatives``).

Among those steps the **branch points** are the ones whose top-1 minus top-2 probability gap
(``probability_gaps``) is below ``epsilon``; with the dynamic threshold (``dynamic_m`` > 0) the
``dynamic_m`` smallest gaps when fewer fall below ``epsilon``; at most ``max_branch_points``,
smallest gaps first (``select_branch_points``). Each alternative of each point is one branch
(``plan_branches``). The settings are ``settings.TPSConfig``; ``tps`` decodes the branches, and
``sample.candidates`` turns them into candidates. Pure numpy (and the tokenizer for spans).

Gold-anchored branching (``--tps.anchor gold``, this project's option, not the TTPA paper's) applies
the same rule to the gold completion read by the model (teacher forcing) instead of its greedy
decode: a gold step may be a branch point under rules 1-3 (with the gold token in the greedy
token's place); the points are the steps where the model's top-1 token is not the gold one or the
gap is below ``epsilon``, ranked mismatches first, then smallest gaps (``select_anchor_points``),
with ``dynamic_m`` and ``max_branch_points`` as above; each point has one alternative: the model's
most likely token other than the gold one (its top-1 where that differs, else its top-2;
``plan_anchored``).

Shapes: N generated steps of one row, K recorded top-k (= ``top_k``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ttpa_jax.decode.settings import TPSConfig
from ttpa_jax.text.spans import call_spans, token_offsets


def call_steps(tokenizer, ids: list[int]) -> np.ndarray:
    """[N] bool: the tokens of ``ids`` that overlap a tool-call span of their decoded text."""
    offsets = token_offsets(tokenizer, ids)
    text = tokenizer.decode(list(ids), skip_special_tokens=False)
    spans = call_spans(text)
    return np.array([any(a < e and s < max(b, a + 1) for s, e in spans) for a, b in offsets], bool)


def eligible_steps(tokenizer, greedy: list[int], tool_call_turn: bool, branch_in: str) -> np.ndarray:
    """[N] bool: the greedy steps where a branch may fall (rule 1 above)."""
    if not tool_call_turn or branch_in == "anywhere":
        return np.ones(len(greedy), bool)
    return call_steps(tokenizer, greedy)


def probability_gaps(top_probs: np.ndarray) -> np.ndarray:
    """top_probs [..., K] (descending) -> top-1 minus top-2 probability [...]."""
    return top_probs[..., 0] - top_probs[..., 1]


def select_branch_points(gaps: Sequence[float], epsilon: float, dynamic_m: int = 0,
                         max_points: int | None = None, allowed: Sequence[bool] | None = None) -> list[int]:
    """Steps to branch at, ascending.

    Among the ``allowed`` steps (default: all): those with ``gap < epsilon``; when ``dynamic_m > 0``
    and fewer than ``dynamic_m`` qualify, the ``dynamic_m`` smallest gaps instead; then at most
    ``max_points`` of them, smallest gaps first. Ties go to the earlier step.
    """
    gaps = np.asarray(gaps, np.float64)
    steps = range(len(gaps)) if allowed is None else [s for s in range(len(gaps)) if allowed[s]]
    by_gap = sorted(steps, key=lambda s: (gaps[s], s))
    chosen = [s for s in by_gap if gaps[s] < epsilon]
    if dynamic_m > 0 and len(chosen) < dynamic_m:
        chosen = by_gap[:dynamic_m]
    if max_points is not None:
        chosen = chosen[:max_points]
    return sorted(chosen)


def alternatives(top_ids: np.ndarray, top_probs: np.ndarray, greedy_token: int, k: int,
                 min_prob: float = 0.0, exclude: Sequence[int] = ()) -> list[tuple[int, int, float]]:
    """``(token, rank, prob)`` of the top-k tokens at one step other than ``greedy_token``.

    top_ids, top_probs: [K] for that step (K >= k). Tokens of zero probability, below ``min_prob``
    or in ``exclude`` (EOS ids) are left out.
    """
    out = []
    for rank in range(min(k, len(top_ids))):
        tok, p = int(top_ids[rank]), float(top_probs[rank])
        if tok != greedy_token and p > 0 and p >= min_prob and tok not in exclude:
            out.append((tok, rank, p))
    return out[: k - 1]


def plan_branches(greedy: np.ndarray, top_ids: np.ndarray, top_probs: np.ndarray, config: TPSConfig,
                  eos_ids: Sequence[int] = (), eligible: np.ndarray | None = None):
    """Branch points and alternatives of one greedy row.

    greedy [N] ids; top_ids, top_probs [N, K]; eligible [N] bool (None: every step). Returns
    ``(gaps [N], allowed [N] bool, points, [(step, token, rank, prob)])``. A step is allowed when it
    is eligible, does not emit an EOS id and has at least one alternative (``alternatives``).
    """
    n = len(greedy)
    gaps = probability_gaps(top_probs[:n])
    eos = tuple(int(e) for e in eos_ids)
    alts = [alternatives(top_ids[s], top_probs[s], int(greedy[s]), config.top_k, config.min_alt_prob, eos)
            for s in range(n)]
    allowed = np.array([bool(alts[s]) and int(greedy[s]) not in eos and (eligible is None or bool(eligible[s]))
                        for s in range(n)], bool)
    points = select_branch_points(gaps, config.epsilon, config.dynamic_m, config.max_branch_points, allowed)
    return gaps, allowed, points, [(s, tok, rank, p) for s in points for tok, rank, p in alts[s]]


def select_anchor_points(gaps: Sequence[float], mismatch: Sequence[bool], epsilon: float, dynamic_m: int = 0,
                         max_points: int | None = None, allowed: Sequence[bool] | None = None) -> list[int]:
    """Gold-anchored branch points, ascending.

    Among the ``allowed`` steps (default: all) ranked by (not ``mismatch``, gap, step), i.e. the
    steps where the model's top-1 is not the gold token first, then the smallest gaps: those that
    mismatch or have ``gap < epsilon``; when ``dynamic_m > 0`` and fewer qualify, the first
    ``dynamic_m`` of the ranking; then at most ``max_points`` of them, in ranking order.
    """
    gaps = np.asarray(gaps, np.float64)
    miss = np.asarray(mismatch, bool)
    steps = range(len(gaps)) if allowed is None else [s for s in range(len(gaps)) if allowed[s]]
    ranked = sorted(steps, key=lambda s: (not miss[s], gaps[s], s))
    chosen = [s for s in ranked if miss[s] or gaps[s] < epsilon]
    if dynamic_m > 0 and len(chosen) < dynamic_m:
        chosen = ranked[:dynamic_m]
    if max_points is not None:
        chosen = chosen[:max_points]
    return sorted(chosen)


def plan_anchored(gold: np.ndarray, top_ids: np.ndarray, top_probs: np.ndarray, config: TPSConfig,
                  eos_ids: Sequence[int] = (), eligible: np.ndarray | None = None):
    """Branch points and alternatives of one teacher-forced gold completion.

    gold [N] ids; top_ids, top_probs [N, K] the model's top-K at each gold step (K >= 2); eligible
    [N] bool (None: every step). Returns ``(gaps [N], mismatch [N] bool, allowed [N] bool, points,
    [(step, token, rank, prob)])``, one alternative per point: the most likely of the model's top-2
    that is not the gold token (nor EOS, nor below ``min_alt_prob``).
    """
    n = len(gold)
    gaps = probability_gaps(top_probs[:n])
    mismatch = np.array([int(top_ids[s, 0]) != int(gold[s]) for s in range(n)], bool)
    eos = tuple(int(e) for e in eos_ids)
    alts = [alternatives(top_ids[s], top_probs[s], int(gold[s]), 2, config.min_alt_prob, eos) for s in range(n)]
    allowed = np.array([bool(alts[s]) and int(gold[s]) not in eos and (eligible is None or bool(eligible[s]))
                        for s in range(n)], bool)
    points = select_anchor_points(gaps, mismatch, config.epsilon, config.dynamic_m, config.max_branch_points, allowed)
    return gaps, mismatch, allowed, points, [(s, *alts[s][0]) for s in points]
