"""The one batching loop of decoding: generation, TPS and evaluation all go through ``decode_in_batches``.

Prompts are sorted by length (shortest first) into batches of ``batch_size``; the last batch is
padded to full size by repeating its last prompt, so every batch of a run has one shape and shares
one compiled decode loop per prompt-length bucket. Results come back in input order. No JAX here:
the caller's ``decode_batch`` does the decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from ttpa_jax.text.prompts import left_pad

R = TypeVar("R")


def pad_token_id(config) -> int:
    """The id prompts are padded with (``ModelConfig.pad_id``)."""
    return config.pad_id


def decode_in_batches(prompt_ids: Sequence[Sequence[int]], batch_size: int, pad_id: int,
                      decode_batch: Callable[[list[int], np.ndarray, np.ndarray], Sequence[R]],
                      progress: Callable[[int], object] | None = None) -> list[R]:
    """One result per prompt, in input order.

    ``decode_batch(rows, ids, mask)`` decodes one full batch: ``rows [B]`` the input indices of its
    rows (the last batch repeats its last index), ``ids, mask [B, T]`` left padded; it returns at
    least the results of the first ``len(set(rows))`` rows in row order. ``progress(n)`` is called
    with the number of prompts finished after each batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    out: list = [None] * len(prompt_ids)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        rows = idx + [idx[-1]] * (batch_size - len(idx))  # full batches: one compiled shape
        ids, mask = left_pad([prompt_ids[i] for i in rows], pad_id)
        results = decode_batch(rows, ids, mask)
        for r, i in enumerate(idx):
            out[i] = results[r]
        if progress is not None:
            progress(len(idx))
    return out
