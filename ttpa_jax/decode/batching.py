"""The one batching loop of decoding: generation, TPS and evaluation all go through ``decode_in_batches``.

Prompts that are token prefixes of another prompt (the turns of one conversation: turn k's prompt
holds turn k-1's) share one prefill: a batch holds B rows but only U <= B conversations, the
longest prompt of each family (``prefix_roots``), and row b reads the first ``lengths[b]`` tokens of
conversation ``conv[b]`` (``PromptBatch``; ``decode.loop.generate`` prefills the U conversations
once). Families go into batches by length, and every batch of a run holds ``batch_size`` rows and
the same number of conversations (``conversation_slots``), so a run compiles few shapes; the last
batch is padded by repeating its last prompt to the smallest power of two that holds it. Results
come back in input order (``decode_in_batches``), or batch by batch as they are decoded
(``iter_batches``: what a resumable stage writes as it goes). No JAX here: the caller's
``decode_batch`` does the decoding.

Shapes: B rows, U conversations, T the longest conversation's tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import numpy as np

from ttpa_jax.text.prompts import left_pad

R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """One batch: row b's prompt is the first ``lengths[b]`` real tokens of conversation ``conv[b]``."""

    rows: list[int]  # [B] input indices (the last batch repeats its last one)
    ids: np.ndarray  # [U, T] int32 conversations, left padded
    mask: np.ndarray  # [U, T] bool
    conv: np.ndarray  # [B] int32 the conversation each row reads
    lengths: np.ndarray  # [B] int32 the row's prompt tokens


def pad_token_id(config) -> int:
    """The id prompts are padded with (``ModelConfig.pad_id``)."""
    return config.pad_id


def prefix_roots(prompt_ids: Sequence[Sequence[int]]) -> list[int]:
    """For each prompt, the index of a longest prompt that starts with it (its own index when none
    does). Sorted as sequences, the prompts starting with p follow p directly, so each looks at that
    run only."""
    seqs = [list(p) for p in prompt_ids]
    order = sorted(range(len(seqs)), key=lambda i: seqs[i])
    roots = list(range(len(seqs)))
    for a, i in enumerate(order):
        p, best = seqs[i], i
        for j in order[a + 1:]:
            if seqs[j][:len(p)] != p:
                break
            if len(seqs[j]) > len(seqs[best]):
                best = j
        roots[i] = best
    return roots


def conversation_slots(families: int, prompts: int, batch_size: int) -> int:
    """Conversations per batch for a run: the power of two (at most ``batch_size``) that holds a
    batch's share of the families, so every batch of the run has one shape."""
    need = -(-batch_size * families // max(prompts, 1))
    return min(batch_size, 1 << max(0, (need - 1).bit_length()))


def plan_batches(prompt_ids: Sequence[Sequence[int]], batch_size: int) -> list[tuple[list[int], list[int], int]]:
    """(rows, each row's conversation as a prompt index, conversation slots) per batch: families
    (``prefix_roots``) by their longest prompt's length, each family's rows shortest first, a batch
    cut when its rows or its ``conversation_slots`` are full; rows padded to ``batch_size`` (the last
    batch to ``last_batch_rows``) by repeating the last."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    roots = prefix_roots(prompt_ids)
    families: dict[int, list[int]] = {}
    for i in sorted(range(len(roots)), key=lambda i: len(prompt_ids[i])):
        families.setdefault(roots[i], []).append(i)
    slots = conversation_slots(len(families), len(roots), batch_size)
    batches: list[list[int]] = [[]]
    convs: set[int] = set()
    for root in sorted(families, key=lambda r: (len(prompt_ids[r]), r)):
        for i in families[root]:
            if len(batches[-1]) == batch_size or (root not in convs and len(convs) == slots):
                batches.append([])
                convs = set()
            batches[-1].append(i)
            convs.add(root)
    plans = []
    for k, idx in enumerate(b for b in batches if b):
        n = batch_size if k < len(batches) - 1 else last_batch_rows(len(idx), batch_size)
        rows = idx + [idx[-1]] * (n - len(idx))
        plans.append((rows, [roots[i] for i in rows], min(slots, n)))
    return plans


def make_batch(prompt_ids: Sequence[Sequence[int]], rows: list[int], roots: list[int], slots: int,
               pad_id: int) -> PromptBatch:
    """The ``PromptBatch`` of one ``plan_batches`` entry: its distinct conversations, padded to
    ``slots`` by repeating the last, left padded."""
    convs = list(dict.fromkeys(roots))
    convs += [convs[-1]] * (slots - len(convs))
    ids, mask = left_pad([prompt_ids[c] for c in convs], pad_id)
    where = {c: u for u, c in reversed(list(enumerate(convs)))}
    return PromptBatch(rows, ids, mask, np.array([where[r] for r in roots], np.int32),
                       np.array([len(prompt_ids[i]) for i in rows], np.int32))


def iter_batches(prompt_ids: Sequence[Sequence[int]], batch_size: int, pad_id: int,
                 decode_batch: Callable[[PromptBatch], Sequence[R]],
                 skip: Callable[[int], bool] | None = None) -> Iterator[tuple[list[int], list[R] | None]]:
    """Per batch of the plan, in plan order: (its prompts' input indices, their results).

    ``decode_batch(batch)`` decodes one ``PromptBatch`` and returns at least the results of its first
    ``len(set(batch.rows))`` rows in row order. A batch whose every prompt is ``skip``-ped (done by
    an earlier run) is not decoded: its results are None. The plan depends only on the prompts and
    ``batch_size``, so a resumed run decodes the batches it still needs exactly as a whole run would.
    """
    for rows, roots, slots in plan_batches(prompt_ids, batch_size):
        idx = list(dict.fromkeys(rows))
        if skip is not None and all(skip(i) for i in idx):
            yield idx, None
            continue
        results = decode_batch(make_batch(prompt_ids, rows, roots, slots, pad_id))
        yield idx, list(results[: len(idx)])


def collect(batches: Iterator[tuple[list[int], list[R] | None]], n: int,
            progress: Callable[[int], object] | None = None) -> list[R]:
    """The results of ``iter_batches`` in input order; ``progress(k)`` after each batch of k prompts."""
    out: list = [None] * n
    for idx, results in batches:
        for i, r in zip(idx, results or [None] * len(idx)):
            out[i] = r
        if progress is not None:
            progress(len(idx))
    return out


def decode_in_batches(prompt_ids: Sequence[Sequence[int]], batch_size: int, pad_id: int,
                      decode_batch: Callable[[PromptBatch], Sequence[R]],
                      progress: Callable[[int], object] | None = None) -> list[R]:
    """One result per prompt, in input order (``iter_batches`` collected). ``progress(n)`` is called
    with the number of prompts finished after each batch."""
    return collect(iter_batches(prompt_ids, batch_size, pad_id, decode_batch), len(prompt_ids), progress)


def last_batch_rows(n: int, batch_size: int) -> int:
    """Rows a batch of ``n <= batch_size`` prompts is padded to: ``batch_size`` when full, else the
    smallest power of two holding ``n`` (a few shapes, little wasted decoding)."""
    return batch_size if n >= batch_size else min(batch_size, 1 << max(0, (n - 1).bit_length()))
