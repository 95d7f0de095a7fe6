"""Token-level Preference Sampling (TPS): greedy decoding plus forced branches where the model is
uncertain.

For each prompt: decode greedily, recording the top-k distribution at every step. Branch points
(the rule: ``branching``) are chosen among the allowed steps (the caller's ``eligible`` rule, e.g. inside tool-call spans;
never the step that emits EOS; the most likely alternative at least ``min_alt_prob``): the steps
whose top-1/top-2 probability gap is below ``epsilon``; with the dynamic threshold
(``dynamic_m > 0``) the ``dynamic_m`` smallest gaps when fewer than that fall below ``epsilon``;
at most ``max_branch_points`` per prompt (the smallest gaps). At each branch point each of the
top-``top_k`` alternatives other than the greedy token is forced, and the branch decodes greedily
to the end (EOS, a stop sequence or the token budget). Branches copy the greedy row's KV cache up to
the branch step and continue from there; all branches of a batch decode together in one loop.

Gold-anchored branching (``iter_anchored``, ``TPSConfig.anchor = "gold"``; this project's option, not
the TTPA paper's): the model reads each prompt's gold completion in one forward pass
(``teacher.teacher_force``, which leaves the cache a decode of it would leave); the branch points are
chosen on the gold steps (``branching.plan_anchored``: where the model's top-1 is not the gold token
or the gap is small), and each branch copies the gold row's cache up to its step, takes the model's
alternative there and decodes greedily on, in the same batched continuation as the greedy branches.

Compiled shapes: a batch's loops depend on the prompt bucket (``loop.prompt_bucket``), the batch's
rows and conversation slots (fixed per run, ``batching``) and, for the branches, the branch rows
padded to a power of two at most ``batch_size * max_branch_points * (top_k - 1)`` (``row_bucket``),
so a run compiles a handful of loops whatever its number of prompts.

Shapes: N generated steps of one row, K recorded top-k (= ``top_k``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from ttpa_jax.decode.batching import collect, iter_batches, pad_token_id
from ttpa_jax.decode.branching import (
    alternatives,
    plan_anchored,
    plan_branches,
    probability_gaps,
    select_anchor_points,
    select_branch_points,
)
from ttpa_jax.decode.settings import DEFAULT_BUCKET, TPSConfig

__all__ = ["TPSConfig", "Branch", "TPSResult", "AnchoredResult", "probability_gaps", "select_branch_points",
           "select_anchor_points", "alternatives", "row_bucket", "tps", "iter_tps", "iter_anchored"]


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
    greedy: list[int]  # greedy generated ids [N]
    gaps: np.ndarray  # [N] top-1 minus top-2 probability per step
    branch_points: list[int]
    branches: list[Branch]
    allowed: np.ndarray | None = None  # [N] bool: steps where a branch could fall


@dataclasses.dataclass
class AnchoredResult:
    """Gold-anchored branches of one prompt: ``anchor`` [N] the gold completion as read (at most the
    token budget); ``mismatch`` [N] where the model's top-1 is not the gold token; a branch's tokens
    are the gold prefix, the alternative at ``position`` and the greedy continuation."""

    anchor: list[int]
    gaps: np.ndarray
    mismatch: np.ndarray
    branch_points: list[int]
    branches: list[Branch]
    allowed: np.ndarray | None = None


# ----------------------------------------------------------------------------- batching branches
def row_bucket(n: int, cap: int) -> int:
    """Rows to pad a branch batch of ``n`` to: the next power of two, at most ``cap`` (and >= n)."""
    return max(n, min(1 << max(0, (n - 1).bit_length()), cap))


# ----------------------------------------------------------------------------- sampling
Eligible = Callable[[int, list[int]], np.ndarray]  # (prompt index, greedy ids) -> [N] bool (``branching``)


def tps(model, prompt_ids: Sequence[Sequence[int]], *, progress=None, **settings) -> list[TPSResult]:
    """TPS for tokenized prompts; one ``TPSResult`` per prompt, in input order. ``settings``: those
    of ``iter_tps``; ``progress``: an optional callable called with the number of prompts finished
    per batch."""
    return collect(iter_tps(model, prompt_ids, **settings), len(prompt_ids), progress)


def iter_tps(model, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int, config: TPSConfig = TPSConfig(),
             batch_size: int = 8, eos_ids=None, stop_token_seqs=(), bucket: int = DEFAULT_BUCKET,
             eligible: Eligible | None = None, skip: Callable[[int], bool] | None = None):
    """TPS batch by batch (``batching.iter_batches``): (input indices, their ``TPSResult``s, or None
    for a batch whose prompts are all ``skip``-ped).

    ``eligible(prompt_index, greedy_ids) -> [N] bool``: the steps where that prompt may branch
    (None: every step).
    """
    from ttpa_jax.decode.loop import generate  # JAX is loaded only to decode

    eos = tuple(model.config.eos_token_ids if eos_ids is None else eos_ids)
    k = config.top_k
    max_rows = batch_size * config.max_branch_points * (k - 1)

    def decode_batch(batch):
        rows = batch.rows
        n_real = len(dict.fromkeys(rows))
        base = generate(model, batch.ids, batch.mask, conv=batch.conv, lengths=batch.lengths,
                        max_new_tokens=max_new_tokens, eos_ids=eos,
                        stop_token_seqs=stop_token_seqs, record_k=k, bucket=bucket, keep_cache=True)
        plan, results = [], []  # plan: (row, step, token, rank, prob, gap)
        for r in range(n_real):
            greedy = base.tokens[r, : int(base.lengths[r])]
            allowed_steps = None if eligible is None else np.asarray(eligible(rows[r], greedy.tolist()), bool)
            gaps, allowed, points, alts = plan_branches(greedy, base.top_ids[r], base.top_probs[r], config, eos,
                                                        allowed_steps)
            plan.extend((r, s, tok, rank, p, float(gaps[s])) for s, tok, rank, p in alts)
            results.append(TPSResult(greedy.tolist(), gaps, points, [], allowed))
        _decode_branches(model, base, plan, results, eos, stop_token_seqs, max_rows)
        return results

    return iter_batches(prompt_ids, batch_size, pad_token_id(model.config), decode_batch, skip)


def _decode_branches(model, base, plan, results, eos, stop_token_seqs, max_rows: int) -> None:
    """Decode every planned branch of a batch together (``loop.continue_decoding`` from ``base``'s
    cache) and append each to its row's result. plan: [(row, step, token, rank, prob, gap)]."""
    from ttpa_jax.decode.loop import continue_decoding

    if not plan:
        return
    rows_, steps, toks = (np.array([p[j] for p in plan], np.int32) for j in range(3))
    br = continue_decoding(model, base, rows_, steps, toks, eos_ids=eos, stop_token_seqs=stop_token_seqs,
                           pad_rows_to=row_bucket(len(plan), max_rows))
    for j, (r, s, tok, rank, p, gap) in enumerate(plan):
        results[r].branches.append(Branch(s, gap, tok, rank, p, br.tokens[j, : br.lengths[j]].tolist()))


def iter_anchored(model, prompt_ids: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], *,
                  max_new_tokens: int, config: TPSConfig = TPSConfig(), batch_size: int = 8, eos_ids=None,
                  stop_token_seqs=(), bucket: int = DEFAULT_BUCKET, eligible: Eligible | None = None,
                  skip: Callable[[int], bool] | None = None):
    """Gold-anchored TPS batch by batch, as ``iter_tps``: (input indices, their ``AnchoredResult``s, or
    None for a skipped batch). ``completions[i]``: prompt i's gold completion ids (the first
    ``max_new_tokens`` are read); ``eligible(prompt_index, gold_ids) -> [N] bool``: where it may branch."""
    from ttpa_jax.decode.teacher import teacher_force  # JAX is loaded only to decode

    eos = tuple(model.config.eos_token_ids if eos_ids is None else eos_ids)
    max_rows = batch_size * config.max_branch_points

    def decode_batch(batch):
        rows = batch.rows
        n_real = len(dict.fromkeys(rows))
        base = teacher_force(model, batch.ids, batch.mask, [completions[i] for i in rows], conv=batch.conv,
                             lengths=batch.lengths, max_new_tokens=max_new_tokens, record_k=2, bucket=bucket)
        plan, results = [], []
        for r in range(n_real):
            gold = base.tokens[r, : int(base.lengths[r])]
            allowed_steps = None if eligible is None else np.asarray(eligible(rows[r], gold.tolist()), bool)
            gaps, mismatch, allowed, points, alts = plan_anchored(gold, base.top_ids[r], base.top_probs[r], config,
                                                                  eos, allowed_steps)
            plan.extend((r, s, tok, rank, p, float(gaps[s])) for s, tok, rank, p in alts)
            results.append(AnchoredResult(gold.tolist(), gaps, mismatch, points, [], allowed))
        _decode_branches(model, base, plan, results, eos, stop_token_seqs, max_rows)
        return results

    return iter_batches(prompt_ids, batch_size, pad_token_id(model.config), decode_batch, skip)
