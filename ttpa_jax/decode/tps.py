"""Token-level Preference Sampling (TPS): greedy decoding plus forced branches where the model is
uncertain.

For each prompt: decode greedily, recording the top-k distribution at every step. Branch points
are the steps whose top-1/top-2 probability gap is below ``epsilon``; with the dynamic threshold
(``dynamic_m > 0``) the ``dynamic_m`` smallest gaps are taken when fewer than that fall below
``epsilon``; at most ``max_branch_points`` per prompt (the smallest gaps). At each branch point
every one of the top-``top_k`` alternatives other than the greedy token is forced, and the branch
decodes greedily to the end (EOS, a stop sequence or the token budget). Branches copy the greedy
row's KV cache up to the branch step and continue from there; all branches of a batch decode
together in one loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ttpa_jax.text.prompts import left_pad


@dataclasses.dataclass(frozen=True)
class TPSConfig:
    """Where to branch and how wide."""

    epsilon: float = 0.1
    """Branch where top-1 minus top-2 probability is below this."""
    top_k: int = 2
    """Alternatives per branch point: the top_k most likely tokens, the greedy one excluded (k >= 2)."""
    dynamic_m: int = 0
    """Dynamic threshold: when fewer than m gaps fall below epsilon, take the m smallest (0: off)."""
    max_branch_points: int = 4
    """Most branch points per prompt (those with the smallest gaps)."""

    def __post_init__(self):
        if self.top_k < 2:
            raise ValueError(f"top_k must be at least 2, got {self.top_k}")
        if self.dynamic_m < 0 or self.max_branch_points < 1:
            raise ValueError("dynamic_m must be >= 0 and max_branch_points >= 1")


@dataclasses.dataclass
class Branch:
    """One forced alternative. tokens: the whole generated sequence (shared prefix, the forced
    token at ``position``, the greedy continuation)."""

    position: int
    gap: float
    token_id: int
    rank: int  # 1: the second most likely token at that step
    prob: float
    tokens: list[int]


@dataclasses.dataclass
class TPSResult:
    greedy: list[int]  # greedy generated ids
    gaps: np.ndarray  # [len(greedy)] top-1 minus top-2 probability per step
    branch_points: list[int]
    branches: list[Branch]


# ----------------------------------------------------------------------------- selection rules
def probability_gaps(top_probs: np.ndarray) -> np.ndarray:
    """top_probs [..., K] (descending) -> top-1 minus top-2 probability [...]."""
    return top_probs[..., 0] - top_probs[..., 1]


def select_branch_points(gaps: Sequence[float], epsilon: float, dynamic_m: int = 0,
                         max_points: int | None = None) -> list[int]:
    """Steps to branch at, ascending.

    Steps with ``gap < epsilon``; when ``dynamic_m > 0`` and fewer than ``dynamic_m`` qualify, the
    ``dynamic_m`` smallest gaps instead; then at most ``max_points`` of them, smallest gaps first.
    Ties go to the earlier step.
    """
    gaps = np.asarray(gaps, np.float64)
    by_gap = sorted(range(len(gaps)), key=lambda s: (gaps[s], s))
    chosen = [s for s in by_gap if gaps[s] < epsilon]
    if dynamic_m > 0 and len(chosen) < dynamic_m:
        chosen = by_gap[:dynamic_m]
    if max_points is not None:
        chosen = chosen[:max_points]
    return sorted(chosen)


def alternatives(top_ids: np.ndarray, top_probs: np.ndarray, greedy_token: int, k: int) -> list[tuple[int, int, float]]:
    """``(token, rank, prob)`` of the top-k tokens at one step other than ``greedy_token``.

    top_ids, top_probs: [K] for that step (K >= k). Tokens of zero probability are left out.
    """
    out = []
    for rank in range(min(k, len(top_ids))):
        tok, p = int(top_ids[rank]), float(top_probs[rank])
        if tok != greedy_token and p > 0:
            out.append((tok, rank, p))
    return out[: k - 1]


def row_bucket(n: int, cap: int) -> int:
    """Rows to pad a branch batch of ``n`` to: the next power of two, at most ``cap`` (and >= n)."""
    return max(n, min(1 << max(0, (n - 1).bit_length()), cap))


# ----------------------------------------------------------------------------- sampling
def tps(model, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int, config: TPSConfig = TPSConfig(),
        batch_size: int = 8, eos_ids=None, stop_token_seqs=(), bucket: int = 32, progress=None) -> list[TPSResult]:
    """TPS for tokenized prompts; one ``TPSResult`` per prompt, in input order.

    ``progress``: an optional callable called with the number of prompts finished per batch.
    """
    from ttpa_jax.decode.loop import continue_decoding, generate

    pad_id = model.config.pad_token_id or 0
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    out: list[TPSResult | None] = [None] * len(prompt_ids)
    k = config.top_k
    max_rows = batch_size * config.max_branch_points * (k - 1)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        rows = idx + [idx[-1]] * (batch_size - len(idx))
        ids, mask = left_pad([prompt_ids[i] for i in rows], pad_id)
        base = generate(model, ids, mask, max_new_tokens=max_new_tokens, eos_ids=eos_ids,
                        stop_token_seqs=stop_token_seqs, record_k=k, bucket=bucket, keep_cache=True)
        plan = []  # (row, step, token, rank, prob, gap)
        results = []
        for r in range(len(idx)):
            n = int(base.lengths[r])
            gaps = probability_gaps(base.top_probs[r, :n])
            points = select_branch_points(gaps, config.epsilon, config.dynamic_m, config.max_branch_points)
            for s in points:
                for tok, rank, p in alternatives(base.top_ids[r, s], base.top_probs[r, s], int(base.tokens[r, s]), k):
                    plan.append((r, s, tok, rank, p, float(gaps[s])))
            results.append(TPSResult(base.tokens[r, :n].tolist(), gaps, points, []))
        if plan:
            rows_, steps, toks = (np.array([p[j] for p in plan], np.int32) for j in range(3))
            br = continue_decoding(model, base, rows_, steps, toks, eos_ids=eos_ids, stop_token_seqs=stop_token_seqs,
                                   pad_rows_to=row_bucket(len(plan), max_rows))
            for j, (r, s, tok, rank, p, gap) in enumerate(plan):
                results[r].branches.append(Branch(s, gap, tok, rank, p, br.tokens[j, : br.lengths[j]].tolist()))
        for r, i in enumerate(idx):
            out[i] = results[r]
        if progress is not None:
            progress(len(idx))
    return out  # type: ignore[return-value]
