"""The shared-prefix layout of a DPO batch: one row per preference pair holding the part both sides
share (the prompt plus the common generated prefix, the longest common prefix of the two token
sequences) once, then the chosen suffix, then the rejected suffix.

A branch id per column (0 trunk, 1 chosen, 2 rejected) makes each suffix see the trunk and itself
only (``model.attention.attention_mask``); positions restart at the trunk's length for the rejected
suffix, so every token sees exactly the context it has in its own full sequence. Each column's logits
predict one token of the row (``target``); the trunk's last column, where the two sides fork,
predicts the chosen suffix's first token and also the rejected suffix's first token (``fork_target``).
The weights say which predictions count for which side: a trunk token after the prompt is a
completion token of both sides and counts for both.

Built on the host from the collated (right-padded) batch; pure numpy. Shapes: B pairs, L the row
length (a bucket length, as ``loader.collate`` pads).
"""

from __future__ import annotations

import numpy as np

LAYOUT_KEYS = ("sp_ids", "sp_positions", "sp_mask", "sp_branch", "sp_target", "sp_fork_target",
               "sp_chosen_w", "sp_rejected_w", "sp_fork_w")


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two 1-D id arrays."""
    n = min(len(a), len(b))
    diff = np.nonzero(a[:n] != b[:n])[0]
    return int(diff[0]) if len(diff) else n


def row_length(batch: dict[str, np.ndarray]) -> int:
    """Tokens the longest pair's shared-prefix row needs (trunk + both suffixes)."""
    best = 0
    for i in range(batch["chosen_ids"].shape[0]):
        c, r = _real(batch, "chosen", i), _real(batch, "rejected", i)
        best = max(best, len(c) + len(r) - common_prefix(c, r))
    return best


def _real(batch, side, i):
    m = batch[f"{side}_mask"][i].astype(bool)
    return batch[f"{side}_ids"][i][m]


def shared_prefix_batch(batch: dict[str, np.ndarray], length: int | None = None, pad_id: int = 0) -> dict[str, np.ndarray]:
    """A collated DPO batch (``chosen_ids``/``_mask``/``_weights``, the same for rejected, [B, L]) -> the
    shared-prefix layout, [B, length] each (``length`` defaults to ``row_length``); other keys (the
    precomputed reference log-probs) pass through. Rows must be right-padded."""
    B = batch["chosen_ids"].shape[0]
    L = length or row_length(batch)
    out = {k: np.zeros((B, L), np.float32 if k.endswith("_w") else np.int32) for k in LAYOUT_KEYS}
    out["sp_ids"][:] = pad_id
    for i in range(B):
        c, r = _real(batch, "chosen", i), _real(batch, "rejected", i)
        wc = batch["chosen_weights"][i][: len(c)]
        wr = batch["rejected_weights"][i][: len(r)]
        P = common_prefix(c, r)
        nc, nr = len(c) - P, len(r) - P
        n = P + nc + nr
        if n > L:
            raise ValueError(f"pair {i}: its shared-prefix row needs {n} tokens, the batch has {L}")
        ids = np.concatenate([c, r[P:]])
        pos = np.concatenate([np.arange(len(c)), np.arange(P, len(r))])
        branch = np.concatenate([np.zeros(P), np.ones(nc), np.full(nr, 2)])
        tgt, w_c, w_r = np.zeros(n, np.int64), np.zeros(n), np.zeros(n)
        # trunk and chosen suffix: column t predicts chosen token t + 1
        tgt[: len(c) - 1], w_c[: len(c) - 1] = c[1:], wc[1:]
        w_r[: max(P - 1, 0)] = wr[1:P]  # trunk tokens are the rejected side's tokens too
        # rejected suffix: column P + nc + j predicts rejected token P + j + 1
        tgt[P + nc: n - 1], w_r[P + nc: n - 1] = r[P + 1:], wr[P + 1:]
        out["sp_ids"][i, :n] = ids
        out["sp_positions"][i, :n] = pos
        out["sp_mask"][i, :n] = 1
        out["sp_branch"][i, :n] = branch
        out["sp_target"][i, :n] = tgt
        out["sp_chosen_w"][i, :n] = w_c
        out["sp_rejected_w"][i, :n] = w_r
        if P >= 1 and nr:  # the fork: the trunk's last column predicts the rejected suffix's first token
            out["sp_fork_target"][i, P - 1] = r[P]
            out["sp_fork_w"][i, P - 1] = wr[P]
    for k, v in batch.items():
        if not (k.startswith("chosen_") or k.startswith("rejected_")):
            out[k] = v
    return out
