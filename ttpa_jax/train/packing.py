"""Packed SFT batches: several records per row, each with its own segment id and positions restarting
at 0, so that no token attends across records (``model.attention.attention_mask``) and the loss equals
the one-record-per-row loss.

The row shape is chosen per batch among a few lengths (``pad_multiple`` times 2**k or 1.5 * 2**k; with
``per_octave`` 4 also 1.25 and 1.75 * 2**k) and row counts (powers of two times ``row_multiple``, at
most one row per record), as the smallest ``rows * length`` into which first-fit-decreasing places
every record: few distinct shapes, so few recompiles. Host-side numpy. Shapes: R rows, L row length.
"""

from __future__ import annotations

import numpy as np

from ttpa_jax.train.batches import Batch, PackedRows
from ttpa_jax.train.config import LENGTHS_PER_OCTAVE  # noqa: F401  (the values candidate_lengths takes; scripts read them here)


def bucket_length(n: int, pad_multiple: int, max_length: int) -> int:
    """Smallest ``pad_multiple * 2**k`` that holds ``n`` tokens, capped at ``max_length``."""
    size = pad_multiple
    while size < n:
        size *= 2
    return min(size, max(max_length, n))


def first_fit(lengths: list[int], rows: int, capacity: int) -> list[list[int]] | None:
    """Record indices per row (longest records first, each into the first row with room), or None
    when they do not fit into ``rows`` rows of ``capacity`` tokens."""
    bins: list[list[int]] = [[] for _ in range(rows)]
    room = [capacity] * rows
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        j = next((j for j in range(rows) if room[j] >= lengths[i]), None)
        if j is None:
            return None
        bins[j].append(i)
        room[j] -= lengths[i]
    return bins


def candidate_lengths(longest: int, pad_multiple: int, max_length: int, per_octave: int = 2) -> list[int]:
    """Row lengths from ``longest`` to ``max(max_length, longest)``: ``pad_multiple * 2**k`` times 1, 1 + 1/n,
    ..., 2 - 1/n for n = ``per_octave`` (2: 512, 768, 1024, 1536, ...; 4: 512, 640, 768, 896, 1024, ...)."""
    cap = max(max_length, longest)
    out, size = set(), pad_multiple
    while size < 2 * cap:
        out.update(size * (per_octave + i) // per_octave for i in range(per_octave))
        size *= 2
    return sorted(n for n in out if longest <= n <= cap) or [cap]


def plan_rows(lengths: list[int], pad_multiple: int, max_length: int, row_multiple: int = 1, per_octave: int = 2):
    """(rows, length, record indices per row) with the fewest padded tokens; of plans with as few, the one
    with the most rows (2 x 1536 rather than 1 x 3072): attention tiles batch over rows, and XLA:CPU
    spreads a batch of rows' tiles over its cores where one row's tiles run on one core (SmolLM2 SFT
    step of 4 tool records, 8 layers: 3.15 s against 3.65 s, docs/benchmarks.md). Lengths as
    ``candidate_lengths``."""
    n = len(lengths)
    counts = sorted({min(row_multiple * 2**k, -(-n // row_multiple) * row_multiple) for k in range(n.bit_length() + 1)})
    best = None
    for L in candidate_lengths(max(lengths), pad_multiple, max_length, per_octave):  # shortest first: ties keep more rows
        for R in counts:
            if R * L < sum(lengths) or (best and R * L >= best[0] * best[1]):
                continue
            bins = first_fit(lengths, R, L)
            if bins is not None:
                best = (R, L, bins)
                break
    assert best is not None  # one record per row always fits
    return best


def pack(examples: list[dict[str, np.ndarray]], pad_id: int, pad_multiple: int, max_length: int,
         row_multiple: int = 1, per_octave: int = 2) -> PackedRows:
    """SFT examples (``input_ids``, ``weights``) -> a packed batch [R, L]: ``input_ids``, ``attention_mask``,
    ``weights``, ``positions`` (from 0 in each record) and ``segment_ids`` (1, 2, ... per record in its
    row; 0 on padding)."""
    lengths = [len(ex["input_ids"]) for ex in examples]
    R, L, bins = plan_rows(lengths, pad_multiple, max_length, row_multiple, per_octave)
    out = {"input_ids": np.full((R, L), pad_id, np.int32), "attention_mask": np.zeros((R, L), np.int32),
           "weights": np.zeros((R, L), np.float32), "positions": np.zeros((R, L), np.int32),
           "segment_ids": np.zeros((R, L), np.int32)}
    for r, members in enumerate(bins):
        at = 0
        for seg, i in enumerate(sorted(members), start=1):
            n = lengths[i]
            out["input_ids"][r, at:at + n] = examples[i]["input_ids"]
            out["attention_mask"][r, at:at + n] = 1
            out["weights"][r, at:at + n] = examples[i]["weights"]
            out["positions"][r, at:at + n] = np.arange(n)
            out["segment_ids"][r, at:at + n] = seg
            at += n
    return PackedRows(**out)


def efficiency(batch: Batch) -> float:
    """Share of a batch's token slots that hold real tokens (1.0: no padding)."""
    masks = batch.masks()
    return float(sum(m.sum() for m in masks) / max(sum(m.size for m in masks), 1))
