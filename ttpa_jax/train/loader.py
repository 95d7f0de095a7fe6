"""Batches from tokenized record files through grain: seeded shuffle (new order every epoch), a
disjoint slice per process, padding to a few bucket lengths, and an iterator state that checkpoints
save, so a resumed run continues with exactly the next batch.
"""

from __future__ import annotations

import functools
import os

import grain
import numpy as np

from ttpa_jax.train.batches import Batch, PairRows, TokenRows
from ttpa_jax.train.example_proto import decode_example
from ttpa_jax.train.packing import bucket_length, pack
from ttpa_jax.train.recordio import open_source
from ttpa_jax.train.score_columns import pair_columns, sft_columns
from ttpa_jax.train.shared_prefix import branch_points, prompt_groups, shared_prefix_batch

# Features that are token ids (padded with pad_id) -> the mask and weights that go with them, by record kind.
SEQ_FEATURES = {TokenRows: {"input_ids": ("attention_mask", "weights")},
                PairRows: {"chosen_ids": ("chosen_mask", "chosen_weights"),
                           "rejected_ids": ("rejected_mask", "rejected_weights")}}


def collate(examples: list[dict[str, np.ndarray]], pad_id: int, pad_multiple: int, max_length: int,
            layout: str = "rows", row_multiple: int = 1, varying_shapes: bool = True,
            row_length: int = 0, lengths_per_octave: int = 2) -> Batch:
    """Right-pad a list of examples (decoded records of one kind) into a typed batch (``train.batches``).

    Sequence features become ``[B, L]`` (ids int32 with a matching ``*_mask``; weights float32);
    scalar-per-example features (reference log-probs, pair weights) become ``[B]``; preference pairs
    get their branch points (``chosen_branch`` [B], ``shared_prefix.branch_points``). All sequences of
    a batch, chosen and rejected alike, share one length L.

    ``layout``: "rows" (one sequence per row, as above: ``TokenRows`` or ``PairRows``), "packed" (SFT:
    several records per row, ``PackedRows``,
    ``packing.pack``; the row count a multiple of ``row_multiple``) or "shared_prefix" (DPO: what
    sequences share run once, ``SharedPrefixPairs``). A row holding several sequences
    is at most ``row_length`` long (0: ``max_length``); its length is one of ``lengths_per_octave`` per
    doubling (``packing.candidate_lengths``).

    ``varying_shapes`` (one process) lets the batch pick shapes from its content: SFT batches get
    ``score_cols`` and shared-prefix ones ``sp_cols`` [R, K] (``score_columns``: the columns the loss
    scores), and shared-prefix batches group the pairs of one prompt. Processes that must agree on
    shapes turn it off: one pair per row, every column scored.
    """
    if layout == "packed":
        batch = pack(examples, pad_id, pad_multiple, row_length or max_length, row_multiple, lengths_per_octave)
    elif layout == "shared_prefix":
        rows = _rows(examples, pad_id, pad_multiple, max_length)
        batch = shared_prefix_batch(rows, pad_id, pad_multiple, row_length or max_length, row_multiple,
                                    group=varying_shapes, per_octave=lengths_per_octave)
        if varying_shapes:
            batch = batch.replace(sp_cols=pair_columns(batch))
    elif layout == "rows":
        batch = _rows(examples, pad_id, pad_multiple, max_length)
    else:
        raise ValueError(f"unknown batch layout {layout!r} (rows, packed, shared_prefix)")
    if varying_shapes and isinstance(batch, TokenRows):  # SFT: the LM head on the columns predicting weighted tokens only
        batch = batch.replace(score_cols=sft_columns(batch.weights))
    return batch


def record_batch_class(example: dict[str, np.ndarray]) -> type[Batch]:
    """The one-per-row batch class of a decoded record: ``PairRows`` for preference records, else ``TokenRows``."""
    return PairRows if "chosen_ids" in example else TokenRows


def _rows(examples, pad_id, pad_multiple, max_length) -> TokenRows | PairRows:
    cls = record_batch_class(examples[0])
    seq = SEQ_FEATURES[cls]
    longest = max(len(ex[k]) for ex in examples for k in seq)
    L = bucket_length(longest, pad_multiple, max_length)
    fields: dict[str, np.ndarray] = {}
    for k, (mask_key, weight_key) in seq.items():
        ids = np.full((len(examples), L), pad_id, np.int32)
        mask = np.zeros((len(examples), L), np.int32)
        weights = np.zeros((len(examples), L), np.float32)
        for i, ex in enumerate(examples):
            n = len(ex[k])
            ids[i, :n], mask[i, :n], weights[i, :n] = ex[k], 1, ex[weight_key]
        fields[k], fields[mask_key], fields[weight_key] = ids, mask, weights
    for k in examples[0]:  # per-record values (precomputed reference log-probs, pair weights) -> [B]
        if k not in fields and k not in {w for _, w in seq.values()}:
            fields[k] = np.stack([np.asarray(ex[k]).reshape(()) for ex in examples]).astype(np.float32)
    batch = cls(**fields)
    if isinstance(batch, PairRows):
        batch = batch.replace(chosen_branch=branch_points(batch))
    return batch


class Loader:
    """An endless iterator of this process's batches, with ``get_state``/``set_state``.

    ``global_batch`` examples per step over all processes; this process yields
    ``global_batch // process_count`` of them: a disjoint, deterministic slice of the same shuffled
    order, so the global batch is identical however many processes share it. ``layout``,
    ``row_multiple``, ``row_length`` and ``lengths_per_octave`` as ``collate``.
    """

    def __init__(self, path: str | os.PathLike, fmt: str, *, global_batch: int, seed: int, shuffle: bool,
                 pad_id: int, pad_multiple: int, max_length: int, process_index: int = 0, process_count: int = 1,
                 layout: str = "rows", row_multiple: int = 1, row_length: int = 0, lengths_per_octave: int = 2):
        if global_batch % process_count:
            raise ValueError(f"batch size {global_batch} is not divisible by the {process_count} processes")
        self.source = open_source(path, fmt)
        self.num_records = len(self.source)
        if self.num_records == 0:
            raise ValueError(f"{path}: no records to train on")
        if shuffle and layout == "shared_prefix":  # a prompt's pairs stay adjacent: one batch runs their prompt once
            order = GroupedShuffle(prompt_groups(decode_example(self.source[i]) for i in range(self.num_records)), seed)
            ds = grain.MapDataset.range(self.num_records).repeat(None).map_with_index(
                lambda i, _: self.source[order(i)])
        else:
            ds = grain.MapDataset.source(self.source)
            if shuffle:
                ds = ds.shuffle(seed=seed)
            ds = ds.repeat(None)  # endless; shuffles differ per epoch
        # Process p takes elements p, p + P, p + 2P, ... of each global batch.
        ds = ds[process_index::process_count]
        local = global_batch // process_count
        ds = ds.map(decode_example).batch(
            local, drop_remainder=True,
            batch_fn=lambda exs: collate(list(exs), pad_id, pad_multiple, max_length, layout, row_multiple,
                                         varying_shapes=process_count == 1, row_length=row_length,
                                         lengths_per_octave=lengths_per_octave),
        )
        self._ds = ds.to_iter_dataset()
        self._it = iter(self._ds)

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        return next(self._it)

    def get_state(self) -> dict:
        return self._it.get_state()

    def set_state(self, state: dict) -> None:
        self._it.set_state(state)


class GroupedShuffle:
    """Position i of an endless record order -> record index: each epoch the groups in a seeded order
    (a new one every epoch), each group's records together in file order."""

    def __init__(self, groups: list[list[int]], seed: int):
        self.groups, self.seed = groups, seed
        self.n = sum(len(g) for g in groups)

    @functools.lru_cache(maxsize=2)
    def epoch(self, e: int) -> np.ndarray:
        order = np.random.default_rng((self.seed, e)).permutation(len(self.groups))
        return np.concatenate([self.groups[g] for g in order])

    def __call__(self, i: int) -> int:
        return int(self.epoch(i // self.n)[i % self.n])
