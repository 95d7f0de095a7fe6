"""The shared-prefix layout of a DPO batch: the tokens several sequences share are run once.

A preference pair's two sides share the prompt and the generated prefix up to the token where they
fork; TPS makes several pairs per prompt (one per branch point), and the gold completion is the chosen
side of many of them. So pairs with the same prompt form a **group**: the group's **trunk** (the
longest prefix every sequence of the group shares, less its last token) once, then each distinct
sequence's remainder as a **branch**, starting at the trunk's last shared token (repeated, at its own
position), so that every column predicts the next token of exactly one sequence:

    trunk (branch 0) | branch 1: gold completion | branch 2: sampled branch A | branch 3: branch B

Branch ids make each branch see its group's trunk and itself only (``model.attention.attention_mask``);
positions restart at the trunk's length in every branch, so every token sees exactly the context it
has in its own full sequence. Groups are packed into rows like SFT records (``packing.plan_rows``),
one segment id per group, so no token sees another group. A pair is a **slot** of the row holding its
group: per-column weights for its chosen and its rejected side (the trunk's and its own branch's
columns), so a side's log-prob is a weighted sum over the row's columns. With ``group=False`` (several
processes, which must agree on shapes) every pair is its own group in its own row: B rows, one slot.

Built on the host from the collated (right-padded) batch; pure numpy. Shapes: B pairs, R rows, L the
row length, M slots per row.
"""

from __future__ import annotations

import numpy as np

from ttpa_jax.train.batches import PairRows, SharedPrefixPairs
from ttpa_jax.train.packing import bucket_length, plan_rows

ROW_KEYS = ("sp_ids", "sp_positions", "sp_mask", "sp_branch", "sp_segment", "sp_target")  # [R, L]
SLOT_KEYS = ("sp_chosen_w", "sp_rejected_w")  # [R, M, L]


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two 1-D arrays."""
    n = min(len(a), len(b))
    diff = np.nonzero(a[:n] != b[:n])[0]
    return int(diff[0]) if len(diff) else n


def branch_points(batch: PairRows) -> np.ndarray:
    """[B] int32: each pair's branch point, the index of the first token where its chosen and rejected
    ids differ (their common prefix's length; a side's length when it is a prefix of the other)."""
    return np.array([common_prefix(_real(batch, "chosen", i)[0], _real(batch, "rejected", i)[0])
                     for i in range(batch.num_pairs)], np.int32)


def _real(batch: PairRows, side, i):
    m = batch[f"{side}_mask"][i].astype(bool)
    return batch[f"{side}_ids"][i][m], batch[f"{side}_weights"][i][m]


class _Group:
    """Pairs sharing a prompt: distinct sequences (ids, weights), and each pair's (chosen, rejected)
    sequence indices."""

    def __init__(self, seqs=(), pairs=()):
        self.seqs: list[tuple[np.ndarray, np.ndarray]] = list(seqs)
        self.pairs: list[tuple[int, int, int]] = list(pairs)  # (pair index in the batch, chosen seq, rejected seq)

    def _index(self, ids, w) -> int:
        for j, (i2, w2) in enumerate(self.seqs):
            if len(i2) == len(ids) and (i2 == ids).all() and (w2 == w).all():
                return j
        self.seqs.append((ids, w))
        return len(self.seqs) - 1

    def plus(self, pair: int, chosen, rejected) -> _Group:
        """A new group: this one with one more pair."""
        g = _Group(self.seqs, self.pairs)
        g.pairs.append((pair, g._index(*chosen), g._index(*rejected)))
        return g

    def trunk(self) -> int:
        """Columns of the trunk: the longest prefix whose tokens, and the weights of the tokens it
        predicts, all sequences share, less one (its last token starts every branch); 0 for one
        sequence alone."""
        ids0, w0 = self.seqs[0]
        if len(self.seqs) == 1:
            return 0
        n = len(ids0)
        for ids, w in self.seqs[1:]:
            n = min(n, common_prefix(ids0, ids), common_prefix(w0[1:], w[1:]) + 1)
        return max(n - 1, 0)

    def length(self) -> int:
        t = self.trunk()
        return t + sum(len(ids) - t for ids, _ in self.seqs)


def _prompt(ids, w) -> bytes:
    nz = np.flatnonzero(w)
    return ids[: nz[0] if len(nz) else len(ids)].tobytes()


def prompt_groups(examples) -> list[list[int]]:
    """Indices of the examples (decoded preference records) grouped by prompt, groups in order of
    first appearance."""
    groups: dict[bytes, list[int]] = {}
    for i, ex in enumerate(examples):
        w = ex["chosen_weights"]
        groups.setdefault(_prompt(np.asarray(ex["chosen_ids"]), np.asarray(w)), []).append(i)
    return list(groups.values())


def group_pairs(batch: PairRows, group: bool, cap: int) -> list[_Group]:
    """The batch's pairs in groups: by prompt (the chosen side's tokens before its first weighted one)
    when ``group``, a group longer than ``cap`` tokens only if one pair alone is (past it the prompt
    starts a new group); else one pair each."""
    groups: list[_Group] = []
    last: dict[bytes, int] = {}  # prompt -> index of its newest group
    for i in range(batch.num_pairs):
        chosen, rejected = _real(batch, "chosen", i), _real(batch, "rejected", i)
        key = _prompt(*chosen)
        if group and key in last:
            g = groups[last[key]].plus(i, chosen, rejected)
            if g.length() <= cap:
                groups[last[key]] = g
                continue
        last[key] = len(groups)
        groups.append(_Group().plus(i, chosen, rejected))
    return groups


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def shared_prefix_batch(batch: PairRows, pad_id: int = 0, pad_multiple: int = 8,
                        max_length: int = 0, row_multiple: int = 1, group: bool = True,
                        per_octave: int = 2) -> SharedPrefixPairs:
    """A collated preference batch (``PairRows``: ``chosen_ids``/``_mask``/``_weights``, the same for
    rejected, [B, L]; rows right-padded) -> the shared-prefix layout (``SharedPrefixPairs``): ``ROW_KEYS`` [R, L], ``SLOT_KEYS`` [R, M, L] and
    ``sp_pair`` [R, M] (the pair in each slot, -1 for an empty one); per-pair values (precomputed
    reference log-probs, pair weights, [B]) move to their slots, [R, M] (0 in empty ones), and so do
    the pairs' branch points (``chosen_branch``, computed here when the batch lacks them).

    With ``group``, R and L come from ``packing.plan_rows`` over the groups (lengths ``pad_multiple``
    times 2**k or 1.5 * 2**k, finer with ``per_octave`` 4 or 8; R a power of two times ``row_multiple``)
    and M is a power of two; without, R = B, one slot per row, and L a ``packing.bucket_length``."""
    B = batch.num_pairs
    groups = group_pairs(batch, False, 0)  # one pair each
    if group:
        groups = group_pairs(batch, True, max(max_length, max(g.length() for g in groups)))
    sizes = [g.length() for g in groups]
    if group:
        R, L, bins = plan_rows(sizes, pad_multiple, max_length, row_multiple, per_octave)
    else:
        R, L, bins = B, bucket_length(max(sizes), pad_multiple, max_length), [[g] for g in range(B)]
    M = _pow2(max(sum(len(groups[g].pairs) for g in members) for members in bins))
    out = {k: np.zeros((R, L), np.int32) for k in ROW_KEYS}
    out["sp_ids"][:] = pad_id
    out.update({k: np.zeros((R, M, L), np.float32) for k in SLOT_KEYS})
    out["sp_pair"] = np.full((R, M), -1, np.int32)
    for r, members in enumerate(bins):
        at, branch, slot = 0, 0, 0
        for seg, g in enumerate(sorted(members), start=1):
            at, branch, slot = _write_group(out, r, groups[g], seg, at, branch, slot)
    if batch.chosen_branch is None:
        batch = batch.replace(chosen_branch=branch_points(batch))
    for k in ("ref_chosen_logp", "ref_rejected_logp", "chosen_branch", "pair_weight"):  # per-pair values -> their slots
        v = batch[k]
        if v is not None:
            valid = out["sp_pair"] >= 0
            out[k] = np.where(valid, np.asarray(v)[np.maximum(out["sp_pair"], 0)], 0).astype(np.asarray(v).dtype)
    return SharedPrefixPairs(**out)


def _write_group(out, r, g: _Group, seg: int, at: int, branch: int, slot: int):
    """Write group ``g`` into row r from column ``at`` as segment ``seg``, its branches numbered after
    ``branch`` and its pairs in slots from ``slot``; returns the next (column, branch id, slot)."""
    t = g.trunk()
    ids0, w0 = g.seqs[0]
    cols = {}  # seq index -> (its columns, the seq positions they hold)
    trunk_cols = np.arange(at, at + t)

    def put(columns, ids, w, pos, b):  # column c holds ids[pos] and predicts ids[pos + 1] (weight w[pos + 1])
        out["sp_ids"][r, columns] = ids[pos]
        out["sp_positions"][r, columns] = pos
        out["sp_mask"][r, columns] = 1
        out["sp_branch"][r, columns] = b
        out["sp_segment"][r, columns] = seg
        nxt = pos + 1 < len(ids)
        out["sp_target"][r, columns[nxt]] = ids[pos[nxt] + 1]

    put(trunk_cols, ids0, w0, np.arange(t), 0)
    at += t
    for j, (ids, w) in enumerate(g.seqs):
        branch += 1
        pos = np.arange(t, len(ids))
        cols[j] = (np.arange(at, at + len(pos)), pos)
        put(cols[j][0], ids, w, pos, branch)
        at += len(pos)
    for pair, c, rj in g.pairs:
        out["sp_pair"][r, slot] = pair
        for key, j in (("sp_chosen_w", c), ("sp_rejected_w", rj)):
            ids, w = g.seqs[j]
            columns, pos = cols[j]
            nxt = pos + 1 < len(ids)
            out[key][r, slot, trunk_cols] = w[1:t + 1]
            out[key][r, slot, columns[nxt]] = w[pos[nxt] + 1]
        slot += 1
    return at, branch, slot
