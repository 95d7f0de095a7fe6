"""The typed batches of training: one registered pytree dataclass per layout, so that which arrays a
batch holds, and their shapes, are written down once and a loss dispatches on the batch's type.

Host code builds them from numpy arrays (``loader.collate``, ``shared_prefix``, ``packing``,
``rl.rollout``); ``Placement.batch`` puts each leaf on the mesh and the jitted step receives the same
class with device arrays. A field left ``None`` is absent (no leaf). Fields keep the names the
record files use, and ``batch["name"]`` reads a field by name (scripts that print a host batch).

Shapes: B sequences or pairs (rows), L padded length, K scored columns, R rows, M pair slots per row.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np


class Batch:
    """What every layout offers: field access by name, a copy with fields replaced, its masks."""

    def __getitem__(self, name: str):
        return getattr(self, name)

    def replace(self, **fields):
        return dataclasses.replace(self, **fields)

    def masks(self) -> list[Any]:
        """The [*, L] masks of real tokens (padding efficiency, tokens per second)."""
        raise NotImplementedError

    def real_tokens(self) -> int:
        return int(sum(np.asarray(m).sum() for m in self.masks()))


def layout(cls):
    """A frozen dataclass registered as a pytree whose fields are all leaves (``None`` for absent)."""
    cls = dataclasses.dataclass(frozen=True, kw_only=True)(cls)
    return jax.tree_util.register_dataclass(cls, data_fields=[f.name for f in dataclasses.fields(cls)],
                                            meta_fields=[])


# --------------------------------------------------------------------------- supervised
@layout
class TokenRows(Batch):
    """SFT, one record per row."""

    input_ids: Any  # [B, L] int32
    attention_mask: Any  # [B, L] int32
    weights: Any  # [B, L] float32: the loss weight of each token (0 on prompts and padding)
    score_cols: Any = None  # [B, K] int32: the columns predicting a weighted token, -1 after (``score_columns``)

    def masks(self):
        return [self.attention_mask]

    def segments(self):
        """(positions, segment_ids) [B, L] of packed records; None, None: positions from the mask."""
        return None, None


@layout
class PackedRows(TokenRows):
    """SFT, several records per row (``packing.pack``): attention and positions per record."""

    positions: Any = None  # [B, L] int32, from 0 in each record
    segment_ids: Any = None  # [B, L] int32, 1, 2, ... per record in its row, 0 on padding

    def segments(self):
        return self.positions, self.segment_ids


@layout
class PairRows(Batch):
    """Preference pairs, each side a full row: chosen_* and rejected_* [B, L] (one length L)."""

    chosen_ids: Any  # [B, L] int32
    chosen_mask: Any  # [B, L] int32
    chosen_weights: Any  # [B, L] float32: 1 on completion tokens
    rejected_ids: Any  # [B, L] int32
    rejected_mask: Any  # [B, L] int32
    rejected_weights: Any  # [B, L] float32
    ref_chosen_logp: Any = None  # [B] float32, with --precompute-ref
    ref_rejected_logp: Any = None  # [B] float32
    chosen_branch: Any = None  # [B] int32: index of the pair's first token where chosen and rejected ids differ
    pair_weight: Any = None  # [B] float32: the pair's loss weight, with --balance-lengths (mean 1 over the data)

    def masks(self):
        return [self.chosen_mask, self.rejected_mask]

    @property
    def num_pairs(self) -> int:
        return self.chosen_ids.shape[0]


@layout
class SharedPrefixPairs(Batch):
    """Preference pairs with what they share run once (``shared_prefix``): R rows of groups, M slots."""

    sp_ids: Any  # [R, L] int32
    sp_positions: Any  # [R, L] int32
    sp_mask: Any  # [R, L] int32
    sp_branch: Any  # [R, L] int32: 0 trunk, else the branch of the column
    sp_segment: Any  # [R, L] int32: one id per group
    sp_target: Any  # [R, L] int32: the token each column predicts
    sp_chosen_w: Any  # [R, M, L] float32: a slot's chosen side's weight per column
    sp_rejected_w: Any  # [R, M, L] float32
    sp_pair: Any  # [R, M] int32: the pair in each slot, -1 for an empty one
    sp_cols: Any = None  # [R, K] int32: the columns any slot scores, -1 after (``score_columns``)
    ref_chosen_logp: Any = None  # [R, M] float32, with --precompute-ref
    ref_rejected_logp: Any = None  # [R, M] float32
    chosen_branch: Any = None  # [R, M] int32: ``PairRows.chosen_branch`` in each slot (0 in empty ones)
    pair_weight: Any = None  # [R, M] float32: ``PairRows.pair_weight`` in each slot (0 in empty ones)

    def masks(self):
        return [self.sp_mask]

    @property
    def num_pairs(self) -> int:
        return self.sp_pair.size


# --------------------------------------------------------------------------- RL
@layout
class Episodes(Batch):
    """RL rollouts (``rl.rollout``), one episode per row; a unit's subclass adds its own arrays."""

    input_ids: Any  # [R, L] int32
    attention_mask: Any  # [R, L] int32
    loss_mask: Any  # [R, L] float32: 1 on the tokens the policy generated
    old_logp: Any = None  # [R, L] float32: the sampling policy's log-probs (prepare pass)
    ref_logp: Any = None  # [R, L] float32: the reference's

    def masks(self):
        return [self.attention_mask]


@layout
class GroupEpisodes(Episodes):
    """GRPO: group-normalised advantages per episode."""

    advantages: Any = None  # [R] float32


@layout
class ValuedEpisodes(Episodes):
    """PPO: the episode's score, and the prepare pass's values, GAE advantages and returns."""

    scores: Any = None  # [R] float32
    old_values: Any = None  # [R, L] float32
    advantages: Any = None  # [R, L] float32
    returns: Any = None  # [R, L] float32


def local_rows(batch: Batch) -> Batch:
    """This process's share of a host batch every process built in full (rows split evenly)."""
    n, p = jax.process_count(), jax.process_index()
    return jax.tree.map(lambda v: v[p * len(v) // n:(p + 1) * len(v) // n], batch)
