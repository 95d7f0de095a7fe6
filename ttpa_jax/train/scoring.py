"""Scoring completions for the losses: per-token log-probs from the model's hidden states, the LM head
run over chosen columns or in chunks, and the sequence scores of each batch layout.

The model (``model.transformer``) computes hidden states and logits; everything here is training's:
``token_logps_and_vocab_mean`` scores every token of a row, ``column_scores`` the tokens given
columns predict (shared-prefix rows, scored columns), ``sft_scores`` and ``pair_scores`` a typed
batch (``train.batches``).

Shapes: B rows, T (or L) length, K scored columns, D hidden size, V vocabulary, N pair slots.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ttpa_jax.model.attention import even_chunks
from ttpa_jax.model.transformer import Ctx, Visibility, positions_from_mask, project_to_vocab
from ttpa_jax.train.batches import PairRows, SharedPrefixPairs, TokenRows
from ttpa_jax.train.score_columns import gather


# --------------------------------------------------------------------------- tokens
def next_token_scores(logits, nxt):
    """logits [B, T, V] float32 and the ids they predict, nxt [B, T] -> (log-probs [B, T], the logits'
    mean over the vocabulary [B, T], a metric that carries no gradient). Reductions over the whole
    array: no shifted copy of the logits."""
    lp = jnp.take_along_axis(logits, nxt[..., None], axis=-1)[..., 0] - jax.nn.logsumexp(logits, axis=-1)
    return lp, jax.lax.stop_gradient(logits.mean(-1))


def next_ids(ids):
    """[B, T]: the token each position predicts (the last column, which predicts nothing, wraps)."""
    return jnp.concatenate([ids[:, 1:], ids[:, :1]], axis=1)


def shift_right(a):
    """[B, T] scores of the tokens at t + 1 -> scores of the tokens at t (column 0 gets 0)."""
    return jnp.pad(a[:, :-1], ((0, 0), (1, 0)))


def token_logps_and_vocab_mean(model, input_ids, attention_mask=None, *, ctx: Ctx = Ctx(), chunk: int = 0,
                               positions=None, segment_ids=None):
    """Per-token scores, float32 ``[B, T]`` each: ``logp[:, t] = log p(ids[:, t] | ids[:, :t])`` and
    ``vocab_mean[:, t]``, the mean over the vocabulary of the logits that predict ``ids[:, t]``. Both
    are 0 at t = 0, which nothing predicts.

    ``chunk > 0`` runs the LM head and the log-softmax over ``chunk`` positions at a time and
    recomputes them in the backward pass: no ``[B, T, V]`` buffer exists, for the price of one
    more LM-head matmul.

    Packed rows: ``segment_ids`` [B, T] (one id per record) and ``positions`` [B, T] (from 0 in each
    record); a record's first token, which nothing in its record predicts, scores 0 like t = 0.
    """
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    if positions is None:
        positions = positions_from_mask(attention_mask)
    view = Visibility(positions, attention_mask, segment_ids=segment_ids)
    lp, vocab_mean = column_scores(model, input_ids, view, next_ids(input_ids), ctx=ctx, chunk=chunk)
    lp, vocab_mean = shift_right(lp), shift_right(vocab_mean)
    if segment_ids is not None:
        starts = positions == 0
        lp, vocab_mean = jnp.where(starts, 0.0, lp), jnp.where(starts, 0.0, vocab_mean)
    return lp, vocab_mean


def column_scores(model, input_ids, view: Visibility, targets, *, ctx: Ctx = Ctx(), chunk: int = 0):
    """Scores of each column's logits, no shift: ``(log p(targets[:, t] | column t), vocab_mean)``, [B, T]
    each. ``targets`` [B, T]: the id each column predicts (a shared-prefix row's column predicts the
    next token of its own branch); ``input_ids``, ``view`` and ``ctx`` as ``Transformer.hidden_states``
    (no cache slot); ``chunk`` as ``token_logps_and_vocab_mean`` (``even_chunks``). ``view.columns``
    [B, K] (valid column indices): the LM head runs on those columns only and the scores are [B, K]
    (``train.score_columns``)."""
    h, _ = model.hidden_states(input_ids, view, ctx=ctx)  # [B, K, D] with columns
    if view.columns is not None:
        targets = jnp.take_along_axis(targets, view.columns, axis=1)
    w = model.head_weight()
    B, T, D = h.shape
    if chunk <= 0 or chunk >= T:
        return next_token_scores(project_to_vocab(h, w), targets)
    n, C = even_chunks(T, chunk)
    pad = n * C - T
    h_chunks = jnp.pad(h, ((0, 0), (0, pad), (0, 0))).reshape(B, n, C, D).swapaxes(0, 1)  # [n, B, C, D]
    tg = jnp.pad(targets, ((0, 0), (0, pad))).reshape(B, n, C).swapaxes(0, 1)  # [n, B, C]
    one = jax.checkpoint(lambda hc, tc: next_token_scores(project_to_vocab(hc, w), tc))
    lp, mean = jax.lax.map(lambda xs: one(*xs), (h_chunks, tg))  # [n, B, C] each
    unchunk = lambda a: a.swapaxes(0, 1).reshape(B, n * C)[:, :T]  # noqa: E731
    return unchunk(lp), unchunk(mean)


# --------------------------------------------------------------------------- batches
def sft_scores(model, batch: TokenRows, ctx: Ctx, logits_chunk: int = 0):
    """(log-probs, weights) of an SFT batch's tokens, float32 each: [B, L] by token, or [B, K] by scored
    column when the batch carries ``score_cols`` (``train.score_columns``: the LM head then runs on
    those columns only; the weighted sum is the same)."""
    ids, mask = batch.input_ids, batch.attention_mask
    positions, segments = batch.segments()
    if batch.score_cols is None:
        lp, _ = token_logps_and_vocab_mean(model, ids, mask, ctx=ctx, chunk=logits_chunk, positions=positions,
                                           segment_ids=segments)
        return lp, batch.weights
    next_w = jnp.pad(batch.weights[:, 1:], ((0, 0), (0, 1)))  # [B, L]: column c's weight is token c + 1's
    cols, valid, (w,) = gather(batch.score_cols, next_w)
    view = Visibility(positions_from_mask(mask) if positions is None else positions, mask, segment_ids=segments,
                      columns=cols)
    lp, _ = column_scores(model, ids, view, next_ids(ids), ctx=ctx, chunk=logits_chunk)
    return lp, w * valid


def pair_scores(model, batch: PairRows | SharedPrefixPairs, ctx: Ctx, logits_chunk: int = 0, *,
                after_branch: bool = False):
    """Sequence log-probs, completion token counts and sums of the mean logits predicting completion
    tokens, each ``[2N]`` (chosen sides, then rejected sides), in either preference layout: ``PairRows``
    (2B rows, N = B) or ``SharedPrefixPairs`` (R rows of M pair slots, N = R * M, empty slots score 0).
    ``after_branch``: a fourth array, ``[N]``, the log-probs of each chosen side's tokens from its pair's
    branch point on (weights ``after_branch_weights``), from the same forward pass."""
    if isinstance(batch, PairRows):
        ids = jnp.concatenate([batch.chosen_ids, batch.rejected_ids])
        mask = jnp.concatenate([batch.chosen_mask, batch.rejected_mask])
        weights = jnp.concatenate([batch.chosen_weights, batch.rejected_weights])
        lp, vocab_mean = token_logps_and_vocab_mean(model, ids, mask, ctx=ctx, chunk=logits_chunk)  # [2B, L]
        out = (lp * weights).sum(-1), weights.sum(-1), (vocab_mean * (weights > 0)).sum(-1)
        if after_branch:
            out += ((lp[:batch.num_pairs] * after_branch_weights(batch)).sum(-1),)
        return out
    wc, wr = batch.sp_chosen_w, batch.sp_rejected_w  # [R, M, L]
    wa = (after_branch_weights(batch),) if after_branch else ()  # [R, M, L]
    cols = None
    if batch.sp_cols is not None:  # the LM head on the completion columns only: [R, K] below
        cols, valid, (wc, wr, *wa) = gather(batch.sp_cols, wc, wr, *wa)
        wc, wr = wc * valid[:, None, :], wr * valid[:, None, :]
        wa = tuple(w * valid[:, None, :] for w in wa)
    view = Visibility(batch.sp_positions, batch.sp_mask, segment_ids=batch.sp_segment, branch_ids=batch.sp_branch,
                      columns=cols)
    lp, vocab_mean = column_scores(model, batch.sp_ids, view, batch.sp_target, ctx=ctx,
                                   chunk=logits_chunk)  # [R, L] (or [R, K]) each
    lp, vocab_mean = lp[:, None, :], vocab_mean[:, None, :]
    side = lambda w: ((lp * w).sum(-1).reshape(-1), w.sum(-1).reshape(-1),  # noqa: E731
                      (vocab_mean * (w > 0)).sum(-1).reshape(-1))
    out = tuple(jnp.concatenate(pair) for pair in zip(side(wc), side(wr)))
    return out + tuple((lp * w).sum(-1).reshape(-1) for w in wa)


def after_branch_weights(batch: PairRows | SharedPrefixPairs):
    """The chosen sides' token weights from each pair's branch point on (``chosen_branch``: the first
    token where its chosen and rejected ids differ), earlier tokens 0: ``[B, L]`` by token (``PairRows``)
    or ``[R, M, L]`` by column (``SharedPrefixPairs``; column c scores the token at ``sp_positions + 1``)."""
    if batch.chosen_branch is None:
        raise ValueError("the batch has no chosen_branch (built outside loader.collate): set it with "
                         "shared_prefix.branch_points")
    if isinstance(batch, SharedPrefixPairs):
        return batch.sp_chosen_w * (batch.sp_positions[:, None, :] + 1 >= batch.chosen_branch[:, :, None])
    token = jnp.arange(batch.chosen_weights.shape[1])[None, :]
    return batch.chosen_weights * (token >= batch.chosen_branch[:, None])


def pair_valid(batch: PairRows | SharedPrefixPairs):
    """[N] float32: 1 for a slot holding a pair."""
    if isinstance(batch, SharedPrefixPairs):
        return (batch.sp_pair >= 0).reshape(-1).astype(jnp.float32)
    return jnp.ones((batch.num_pairs,), jnp.float32)


def chosen_weight_sum(batch: PairRows | SharedPrefixPairs):
    """The chosen sides' completion tokens (weights) of the whole batch."""
    return batch.sp_chosen_w.sum() if isinstance(batch, SharedPrefixPairs) else batch.chosen_weights.sum()


def reference_logps(reference, batch: PairRows | SharedPrefixPairs, logits_chunk: int = 0):
    """Reference sequence log-probs (chosen [N], rejected [N]) from one forward pass of ``reference``
    with adapters off, in either layout (``pair_scores``)."""
    logps, _, _ = pair_scores(reference, batch, Ctx(lora=False), logits_chunk)
    ref = jax.lax.stop_gradient(logps)
    n = batch.num_pairs
    return ref[:n], ref[n:]
