"""``train dpo``'s unit: DPO (sigmoid, IPO or hinge loss) on preference records, TRL's metrics.

Batches: ``PairRows`` (two full rows per pair) or ``SharedPrefixPairs`` (``--dpo.shared-prefix``: what
a prompt's pairs share runs once); both score to the same sequence log-probs (``scoring.pair_scores``).
The reference is the policy with adapters off (LoRA) or a frozen copy, run in the step, or its
log-probs computed once before training (``--dpo.precompute-ref``, ``reference``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ttpa_jax.train.batches import PairRows, SharedPrefixPairs
from ttpa_jax.train.dpo.config import DpoArgs
from ttpa_jax.train.dpo.reference import precompute_reference
from ttpa_jax.train.scoring import chosen_weight_sum, pair_scores, pair_valid, reference_logps
from ttpa_jax.train.supervised import RecordUnit
from ttpa_jax.train.trainer import Objective


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


def pair_normalizers(batch: PairRows | SharedPrefixPairs):
    """The pairs of the whole batch, and its chosen completion tokens (preference units)."""
    return {"pairs": pair_valid(batch).sum(), "chosen_tokens": jnp.maximum(chosen_weight_sum(batch), 1e-6)}


def pair_metric_sums(pol_c, pol_r, logit_sums, counts, n):
    """TRL's per-pair sums shared by the preference units: log-probs, and the logits predicting
    completion tokens, of each side (``finalize_pair_metrics`` turns them into means)."""
    return {"chosen_tokens": counts[:n].sum(), "rejected_tokens": counts[n:].sum(),
            "logps/chosen": pol_c.sum(), "logps/rejected": pol_r.sum(),
            "logits/chosen": logit_sums[:n].sum(), "logits/rejected": logit_sums[n:].sum()}


def finalize_pair_metrics(s, per_pair: tuple[str, ...]):
    """Means of ``pair_metric_sums`` (and the ``per_pair`` sums) over the pairs and completion tokens."""
    pairs = jnp.maximum(s["pairs"], 1)
    out = {k: s[k] / pairs for k in per_pair + ("logps/chosen", "logps/rejected")}
    out["logits/chosen"] = s["logits/chosen"] / jnp.maximum(s["chosen_tokens"], 1)
    out["logits/rejected"] = s["logits/rejected"] / jnp.maximum(s["rejected_tokens"], 1)
    return out


def make_dpo(beta: float, loss_type: str, label_smoothing: float = 0.0, sft_weight: float = 0.0,
             logits_chunk: int = 0, precomputed_ref: bool = False) -> Objective:
    """``precomputed_ref``: the batches carry the reference log-probs (``ref_chosen_logp``, ...); else
    the step passes the reference model."""

    def loss(model, reference, batch, ctx, norms):
        n, valid = batch.num_pairs, pair_valid(batch)  # [N]
        # [2N] each, chosen then rejected; logit_sums: TRL's logits metric (the logits predicting completion tokens)
        logps, counts, logit_sums = pair_scores(model, batch, ctx, logits_chunk)
        if precomputed_ref:  # [B] by pair, or [R, M] by slot
            ref_c, ref_r = batch.ref_chosen_logp.reshape(-1), batch.ref_rejected_logp.reshape(-1)
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
            "rewards/chosen": r_c.sum(), "rewards/rejected": r_r.sum(),
            "rewards/accuracies": ((r_c > r_r) * valid).sum(), "rewards/margins": (r_c - r_r).sum(),
            **pair_metric_sums(pol_c, pol_r, logit_sums, counts, n),
        }
        return total, sums

    def finalize(s):
        out = finalize_pair_metrics(s, ("rewards/chosen", "rewards/rejected", "rewards/accuracies",
                                        "rewards/margins"))
        sft = s["nll"] / jnp.maximum(s["chosen_tokens"], 1e-6)
        out["loss"] = s["dpo_loss"] / jnp.maximum(s["pairs"], 1) + sft_weight * sft
        if sft_weight:
            out["nll_loss"] = sft
        return out

    return Objective(pair_normalizers, loss, finalize, needs_reference=not precomputed_ref)


def objective(cfg: DpoArgs) -> Objective:
    d = cfg.dpo
    return make_dpo(d.beta, d.loss_type, d.label_smoothing, d.sft_weight, cfg.logits_chunk, d.precompute_ref)


def pair_layout(shared_prefix: bool) -> str:
    return "shared_prefix" if shared_prefix else "rows"


UNIT = RecordUnit(kind="preference", objective=objective, layout=lambda cfg: pair_layout(cfg.dpo.shared_prefix),
                  precompute=lambda cfg: precompute_reference if cfg.dpo.precompute_ref else None)
