"""The columns of a training batch whose next-token scores its loss uses.

An SFT row weights only its assistant tokens and a DPO pair only its completions: in tool-use data
about a tenth of the row. The LM head (``[D, V]``: a fifth of a small model's forward FLOPs) and its
log-softmax then run on those columns only (``scoring.column_scores``, ``Visibility.columns``); the loss is
the same sum over the same terms.

The host picks them (``sft_columns``, ``pair_columns``: ``[B, K]`` column indices, -1 after a row's
last), K the smallest of L/8, L/4, L/2 and L that holds every row's, so a run compiles few shapes;
``gather`` takes them and the arrays they index on the device. Column c scores the token at c + 1.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

FRACTIONS = (8, 4, 2, 1)


def score_columns(selected: np.ndarray) -> np.ndarray:
    """selected [B, L] bool -> [B, K] int32: each row's selected column indices in order, then -1."""
    B, L = selected.shape
    need = int(selected.sum(axis=1).max(initial=0))
    K = next(L // f for f in FRACTIONS if need <= L // f)
    out = np.full((B, max(K, 1)), -1, np.int32)
    for b in range(B):
        idx = np.flatnonzero(selected[b])
        out[b, : len(idx)] = idx
    return out


def sft_columns(weights: np.ndarray) -> np.ndarray:
    """SFT token weights [B, L] -> the columns predicting a weighted token ([B, K], ``score_columns``)."""
    selected = np.zeros(weights.shape, bool)
    selected[:, :-1] = weights[:, 1:] > 0
    return score_columns(selected)


def pair_columns(batch) -> np.ndarray:
    """A shared-prefix batch (``SharedPrefixPairs``) -> the columns any slot's weight counts ([R, K],
    ``score_columns``)."""
    return score_columns(((batch.sp_chosen_w > 0) | (batch.sp_rejected_w > 0)).any(axis=1))


def gather(cols, *arrays):
    """cols [B, K] (-1 pads) and arrays [B, L] or [B, M, L] -> (columns [B, K] clipped to valid indices,
    valid [B, K] bool, each array at those columns, [B, K] or [B, M, K])."""
    valid = cols >= 0
    c = jnp.maximum(cols, 0)
    take = lambda a: jnp.take_along_axis(a, c if a.ndim == 2 else c[:, None, :], axis=-1)  # noqa: E731
    return c, valid, tuple(take(a) for a in arrays)
