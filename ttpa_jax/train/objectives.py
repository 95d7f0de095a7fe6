"""Training objectives: small pure functions over a batch.

An objective has three parts, so gradient accumulation and multi-device runs give exactly the
full-batch result:

- ``normalizers(batch) -> dict``: global denominators (token weight, number of pairs), computed once
  over the whole batch before it is split into micro-batches;
- ``loss(model, reference, batch, ctx, norms) -> (loss, sums)``: the micro-batch's share of the
  full-batch loss, and additive metric sums;
- ``finalize(sums) -> metrics``: metric means from the sums of all micro-batches.

The policy and the reference are models with ``token_logps_and_vocab_mean`` (``model.Transformer``); ``logits_chunk``
runs their LM head over that many positions at a time (see ``Transformer.token_logps_and_vocab_mean``).

Shapes: B sequences or pairs, L padded length, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from ttpa_jax.model.transformer import Ctx, next_ids, positions_from_mask
from ttpa_jax.train.score_columns import gather


@dataclasses.dataclass(frozen=True)
class Objective:
    normalizers: Callable
    loss: Callable
    finalize: Callable
    needs_reference: bool = False


# --------------------------------------------------------------------------- SFT
def _sft_normalizers(batch):
    return {"weight": jnp.maximum(batch["weights"].sum(), 1e-6)}


def _sft_finalize(s):
    return {"loss": s["nll"] / jnp.maximum(s["weight"], 1e-6), "loss_tokens": s["loss_tokens"]}


def make_sft(logits_chunk: int = 0) -> Objective:
    """Weighted token cross-entropy: sum(w * nll) / sum(w) over the whole batch."""

    def loss(model, reference, batch, ctx: Ctx, norms):
        lp, w = sft_scores(model, batch, ctx, logits_chunk)
        nll = -(lp * w).sum()
        sums = {"nll": nll, "weight": w.sum(), "loss_tokens": (w > 0).sum().astype(jnp.float32)}
        return nll / norms["weight"], sums

    return Objective(_sft_normalizers, loss, _sft_finalize)


def sft_scores(model, batch, ctx: Ctx, logits_chunk: int = 0):
    """(log-probs, weights) of an SFT batch's tokens, float32 each: [B, L] by token, or [B, K] by scored
    column when the batch names its ``score_cols`` (``train.score_columns``: the LM head then runs on
    those columns only; the weighted sum is the same)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    positions, segments = batch.get("positions"), batch.get("segment_ids")
    if "score_cols" not in batch:
        lp, _ = model.token_logps_and_vocab_mean(ids, mask, ctx=ctx, chunk=logits_chunk, positions=positions,
                                                 segment_ids=segments)
        return lp, batch["weights"]
    next_w = jnp.pad(batch["weights"][:, 1:], ((0, 0), (0, 1)))  # [B, L]: column c's weight is token c + 1's
    cols, valid, (w,) = gather(batch["score_cols"], next_w)
    lp, _ = model.column_scores(ids, positions_from_mask(mask) if positions is None else positions, mask,
                                next_ids(ids), ctx=ctx, chunk=logits_chunk, segment_ids=segments, columns=cols)
    return lp, w * valid


# --------------------------------------------------------------------------- DPO
def dpo_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta, loss_type, label_smoothing=0.0):
    """Per-pair DPO losses [B] from sequence log-probs [B] (float32).

    sigmoid: -(1-ls) log s(beta h) - ls log s(-beta h), h the difference of log-ratios (conservative
    DPO when ls > 0); hinge: relu(1 - beta h); ipo: (h - 1/(2 beta))^2.
    """
    h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    if loss_type == "sigmoid":
        return -(1 - label_smoothing) * jax.nn.log_sigmoid(beta * h) - label_smoothing * jax.nn.log_sigmoid(-beta * h)
    if loss_type == "hinge":
        return jax.nn.relu(1 - beta * h)
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown DPO loss_type {loss_type!r} (sigmoid, ipo, hinge)")


def _concat(batch):
    ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]])
    mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]])
    weights = jnp.concatenate([batch["chosen_weights"], batch["rejected_weights"]])
    return ids, mask, weights


def pair_scores(model, batch, ctx: Ctx, logits_chunk: int = 0):
    """Sequence log-probs, completion token counts and sums of the mean logits predicting completion
    tokens, each ``[2N]`` (chosen sides, then rejected sides), in either batch layout: the concatenated
    one (``chosen_ids``, ``rejected_ids`` [B, L]: 2B rows, N = B) or the shared-prefix one (``sp_*``:
    R rows of M pair slots, N = R * M, empty slots score 0; ``train.shared_prefix``)."""
    if "sp_ids" not in batch:
        ids, mask, weights = _concat(batch)
        lp, vocab_mean = model.token_logps_and_vocab_mean(ids, mask, ctx=ctx, chunk=logits_chunk)  # [2B, L]
        return (lp * weights).sum(-1), weights.sum(-1), (vocab_mean * (weights > 0)).sum(-1)
    wc, wr = batch["sp_chosen_w"], batch["sp_rejected_w"]  # [R, M, L]
    cols = None
    if "sp_cols" in batch:  # the LM head on the completion columns only: [R, K] below
        cols, valid, (wc, wr) = gather(batch["sp_cols"], wc, wr)
        wc, wr = wc * valid[:, None, :], wr * valid[:, None, :]
    lp, vocab_mean = model.column_scores(
        batch["sp_ids"], batch["sp_positions"], batch["sp_mask"], batch["sp_target"], ctx=ctx, chunk=logits_chunk,
        segment_ids=batch["sp_segment"], branch_ids=batch["sp_branch"], columns=cols)  # [R, L] (or [R, K]) each
    lp, vocab_mean = lp[:, None, :], vocab_mean[:, None, :]
    side = lambda w: ((lp * w).sum(-1).reshape(-1), w.sum(-1).reshape(-1),  # noqa: E731
                      (vocab_mean * (w > 0)).sum(-1).reshape(-1))
    return tuple(jnp.concatenate(pair) for pair in zip(side(wc), side(wr)))


def num_pairs(batch) -> int:
    """N: the pair slots of a batch (``pair_scores``)."""
    return batch["sp_pair"].size if "sp_ids" in batch else batch["chosen_ids"].shape[0]


def pair_valid(batch):
    """[N] float32: 1 for a slot holding a pair."""
    if "sp_ids" in batch:
        return (batch["sp_pair"] >= 0).reshape(-1).astype(jnp.float32)
    return jnp.ones((batch["chosen_ids"].shape[0],), jnp.float32)


def chosen_weight_sum(batch):
    return batch["sp_chosen_w"].sum() if "sp_ids" in batch else batch["chosen_weights"].sum()


def reference_logps(reference, batch, logits_chunk: int = 0):
    """Reference sequence log-probs (chosen [N], rejected [N]) from one forward pass of ``reference``
    with adapters off, in either layout (``pair_scores``)."""
    logps, _, _ = pair_scores(reference, batch, Ctx(lora=False), logits_chunk)
    ref = jax.lax.stop_gradient(logps)
    n = num_pairs(batch)
    return ref[:n], ref[n:]


def make_dpo(beta: float, loss_type: str, label_smoothing: float = 0.0, sft_weight: float = 0.0,
             logits_chunk: int = 0) -> Objective:
    def normalizers(batch):
        return {"pairs": pair_valid(batch).sum(),
                "chosen_tokens": jnp.maximum(chosen_weight_sum(batch), 1e-6)}

    def loss(model, reference, batch, ctx, norms):
        n, valid = num_pairs(batch), pair_valid(batch)  # [N]
        # [2N] each, chosen then rejected; logit_sums: TRL's logits metric (the logits predicting completion tokens)
        logps, counts, logit_sums = pair_scores(model, batch, ctx, logits_chunk)
        if "ref_chosen_logp" in batch:  # [B] by pair, or [R, M] by slot
            ref_c, ref_r = batch["ref_chosen_logp"].reshape(-1), batch["ref_rejected_logp"].reshape(-1)
        else:
            ref_c, ref_r = reference_logps(reference, batch, logits_chunk)
        pol_c, pol_r = logps[:n], logps[n:]
        if loss_type == "ipo":  # IPO compares per-token averages
            cnt_c, cnt_r = jnp.maximum(counts[:n], 1), jnp.maximum(counts[n:], 1)
            losses = dpo_losses(pol_c / cnt_c, pol_r / cnt_r, ref_c / cnt_c, ref_r / cnt_r,
                                beta=beta, loss_type=loss_type)
        else:
            losses = dpo_losses(pol_c, pol_r, ref_c, ref_r, beta=beta, loss_type=loss_type,
                                label_smoothing=label_smoothing)
        losses = losses * valid
        total = losses.sum() / norms["pairs"]
        nll = -pol_c.sum()
        if sft_weight:
            total = total + sft_weight * nll / norms["chosen_tokens"]
        r_c = beta * (pol_c - ref_c)
        r_r = beta * (pol_r - ref_r)
        sums = {
            "dpo_loss": losses.sum(), "pairs": valid.sum(), "nll": nll,
            "chosen_tokens": counts[:n].sum(), "rejected_tokens": counts[n:].sum(),
            "rewards/chosen": r_c.sum(), "rewards/rejected": r_r.sum(),
            "rewards/accuracies": ((r_c > r_r) * valid).sum(), "rewards/margins": (r_c - r_r).sum(),
            "logps/chosen": pol_c.sum(), "logps/rejected": pol_r.sum(),
            "logits/chosen": logit_sums[:n].sum(), "logits/rejected": logit_sums[n:].sum(),
        }
        return total, sums

    def finalize(s):
        pairs = jnp.maximum(s["pairs"], 1)
        out = {k: s[k] / pairs for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracies",
                                         "rewards/margins", "logps/chosen", "logps/rejected")}
        out["logits/chosen"] = s["logits/chosen"] / jnp.maximum(s["chosen_tokens"], 1)
        out["logits/rejected"] = s["logits/rejected"] / jnp.maximum(s["rejected_tokens"], 1)
        sft = s["nll"] / jnp.maximum(s["chosen_tokens"], 1e-6)
        out["loss"] = s["dpo_loss"] / pairs + sft_weight * sft
        if sft_weight:
            out["nll_loss"] = sft
        return out

    return Objective(normalizers, loss, finalize, needs_reference=True)
