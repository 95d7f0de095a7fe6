"""Preference pairs from scored candidates (TTPA's pair selection).

chosen = the best-scoring candidate when it is error-free, otherwise the gold call text (score 1.0);
rejected = every candidate scoring at least ``margin`` below the chosen one. Candidates come from
token-level sampling and share the prefix up to their branch token, so a pair differs where the
model was uncertain.
"""

from __future__ import annotations

from collections.abc import Sequence

from ttpa_jax.tools.esm import ScoreResult

Pair = tuple[str, str, float, float]

_EPS = 1e-9  # scores are sums of float weights: 1.0 - 0.8 must count as a 0.2 margin


def select_pairs(candidates: Sequence[tuple[str, ScoreResult]], gold_text: str, margin: float) -> list[Pair]:
    """``(chosen_text, rejected_text, chosen_score, rejected_score)`` for each rejected candidate.

    Deterministic: ties for best go to the earliest candidate; rejected candidates keep their
    input order; a text appears at most once and never on both sides. ``margin`` must be > 0.
    """
    if margin <= 0:
        raise ValueError(f"margin must be positive, got {margin}")
    best_text, best = None, None
    for text, result in candidates:
        if best is None or result.score > best.score:
            best_text, best = text, result
    if best is not None and best.exact:
        chosen_text, chosen_score = best_text, best.score
    else:
        chosen_text, chosen_score = gold_text, 1.0
    pairs, seen = [], {chosen_text}
    for text, result in candidates:
        if text in seen or chosen_score - result.score < margin - _EPS:
            continue
        seen.add(text)
        pairs.append((chosen_text, text, chosen_score, result.score))
    return pairs
