"""``train dpo``'s unit: DPO (sigmoid, IPO or hinge loss) on preference records, TRL's metrics.

Batches: ``PairRows`` (two full rows per pair) or ``SharedPrefixPairs`` (``--shared-prefix``: what
a prompt's pairs share runs once); both score to the same sequence log-probs (``scoring.pair_scores``).
The reference is the policy with adapters off (LoRA) or a frozen copy, run in the step, or its
log-probs computed once before training (``--precompute-ref``, ``reference``).

Against likelihood displacement (pairs differing in one token lower the chosen side too):
DPO-Positive (``--dpop-lambda``), an SFT term on the chosen side (``--sft-weight``, over the tokens
from each pair's branch point on with ``--sft-tokens after_branch``), and pair weights that balance
longer and shorter chosen sides (``--balance-lengths``). With DPO-Positive the metrics add
``dpop/penalty`` and ``dpop/chosen_below_ref`` (how far, and how often, the chosen side is below the
reference; ``rewards/chosen`` < 0 says the same on average at any lambda).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from ttpa_jax.core.errors import ConfigError
from ttpa_jax.model.distributed import sync_processes
from ttpa_jax.train.batches import PairRows, SharedPrefixPairs
from ttpa_jax.train.dataset import balance_lengths
from ttpa_jax.train.dpo.config import DpoArgs, check_dpop
from ttpa_jax.train.dpo.reference import precompute_reference
from ttpa_jax.train.scoring import after_branch_weights, chosen_weight_sum, pair_scores, pair_valid, reference_logps
from ttpa_jax.train.supervised import RecordUnit
from ttpa_jax.train.trainer import Objective


def dpo_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta, loss_type, label_smoothing=0.0,
               dpop_lambda=0.0):
    """Per-pair DPO losses [B] from sequence log-probs [B] (float32).

    sigmoid: -(1-ls) log s(beta h) - ls log s(-beta h), h the difference of log-ratios (conservative
    DPO when ls > 0); hinge: relu(1 - beta h); ipo: (h - 1/(2 beta))^2. DPO-Positive (``dpop_lambda``
    > 0; sigmoid without ls, or hinge): h - lambda * max(0, ref_chosen - policy_chosen) in place of h.
    """
    h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    if dpop_lambda:
        h = h - dpop_lambda * dpop_penalty(policy_chosen, ref_chosen)
    if loss_type == "sigmoid":
        return -(1 - label_smoothing) * jax.nn.log_sigmoid(beta * h) - label_smoothing * jax.nn.log_sigmoid(-beta * h)
    if loss_type == "hinge":
        return jax.nn.relu(1 - beta * h)
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown DPO loss_type {loss_type!r} (sigmoid, ipo, hinge)")


def dpop_penalty(policy_chosen, ref_chosen):
    """[B]: how far each chosen side's sequence log-prob is below the reference's, max(0, ref - policy)."""
    return jax.nn.relu(ref_chosen - policy_chosen)


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


DPOP_METRICS = ("dpop/penalty", "dpop/chosen_below_ref")
"""With ``dpop_lambda`` > 0: the mean over pairs of max(0, ref - policy) of the chosen side's sequence
log-prob, and the share of pairs whose chosen side is below the reference."""


def make_dpo(beta: float, loss_type: str, label_smoothing: float = 0.0, sft_weight: float = 0.0,
             logits_chunk: int = 0, precomputed_ref: bool = False, *, dpop_lambda: float = 0.0,
             sft_tokens: str = "all", balance_lengths: bool = False) -> Objective:
    """``precomputed_ref``: the batches carry the reference log-probs (``ref_chosen_logp``, ...); else
    the step passes the reference model. ``dpop_lambda``, ``sft_tokens``, ``balance_lengths``: as
    ``DpoConfig`` (``balance_lengths`` reads the batches' ``pair_weight``)."""
    check_dpop(dpop_lambda, loss_type, label_smoothing)
    if sft_tokens not in ("all", "after_branch"):
        raise ConfigError(f"unknown sft_tokens {sft_tokens!r} (all, after_branch)")
    after_branch = sft_tokens == "after_branch"

    def normalizers(batch):
        norms = pair_normalizers(batch)
        if after_branch:  # the SFT term's tokens: the chosen sides' from their branch points on
            norms["sft_tokens"] = jnp.maximum(after_branch_weights(batch).sum(), 1e-6)
        return norms

    def loss(model, reference, batch, ctx, norms):
        n, valid = batch.num_pairs, pair_valid(batch)  # [N]
        # [2N] each, chosen then rejected; logit_sums: TRL's logits metric (the logits predicting completion
        # tokens); with after_branch also [N]: the chosen sides' log-probs from their branch points on
        logps, counts, logit_sums, *branch = pair_scores(model, batch, ctx, logits_chunk, after_branch=after_branch)
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
                                label_smoothing=label_smoothing, dpop_lambda=dpop_lambda)
        losses = losses * (pair_weights(batch) * valid if balance_lengths else valid)
        total = losses.sum() / norms["pairs"]
        nll = -(branch[0] if after_branch else pol_c).sum()
        if sft_weight:
            total = total + sft_weight * nll / norms["sft_tokens" if after_branch else "chosen_tokens"]
        r_c = beta * (pol_c - ref_c)
        r_r = beta * (pol_r - ref_r)
        sums = {
            "dpo_loss": losses.sum(), "pairs": valid.sum(), "nll": nll,
            "rewards/chosen": r_c.sum(), "rewards/rejected": r_r.sum(),
            "rewards/accuracies": ((r_c > r_r) * valid).sum(), "rewards/margins": (r_c - r_r).sum(),
            **pair_metric_sums(pol_c, pol_r, logit_sums, counts, n),
        }
        if dpop_lambda:
            penalty = dpop_penalty(pol_c, ref_c) * valid
            sums["dpop/penalty"], sums["dpop/chosen_below_ref"] = penalty.sum(), ((penalty > 0) * valid).sum()
        if after_branch:
            sums["sft_tokens"] = after_branch_weights(batch).sum()
        return total, sums

    def finalize(s):
        out = finalize_pair_metrics(s, ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")
                                    + DPOP_METRICS * bool(dpop_lambda))
        sft = s["nll"] / jnp.maximum(s["sft_tokens" if after_branch else "chosen_tokens"], 1e-6)
        out["loss"] = s["dpo_loss"] / jnp.maximum(s["pairs"], 1) + sft_weight * sft
        if sft_weight:
            out["nll_loss"] = sft
        return out

    return Objective(normalizers, loss, finalize, needs_reference=not precomputed_ref)


def pair_weights(batch: PairRows | SharedPrefixPairs):
    """[N] float32: each pair's ``pair_weight`` (``--balance-lengths``; 0 in empty slots)."""
    if batch.pair_weight is None:
        raise ConfigError("balance_lengths: the batch has no pair_weight (the records were not built with "
                          "dataset.balance_lengths)")
    return batch.pair_weight.reshape(-1)


def objective(cfg: DpoArgs) -> Objective:
    d = cfg.dpo
    return make_dpo(d.beta, d.loss_type, d.label_smoothing, d.sft_weight, cfg.logits_chunk, d.precompute_ref,
                    dpop_lambda=d.dpop_lambda, sft_tokens=d.sft_tokens, balance_lengths=d.balance_lengths)


def precompute(cfg: DpoArgs):
    """What runs once before training, in order: the pair weights (``--balance-lengths``), then the
    reference pass (``--precompute-ref``); None when neither is asked for."""
    d = cfg.dpo
    if not (d.balance_lengths or d.precompute_ref):
        return None

    def run(trainer, records: Path, cfg: DpoArgs, layout: str, progress: bool = True) -> Path:
        if d.balance_lengths:
            records = balanced_records(records, cfg.dataset.format)
        if d.precompute_ref:
            records = precompute_reference(trainer, records, cfg, layout, progress)
        return records

    return run


def balanced_records(records: Path, fmt: str) -> Path:
    """``dataset.balance_lengths`` run by process 0 first, then reused (or rebuilt alike) by the others."""
    if jax.process_index() == 0:
        balance_lengths(records, fmt)
    sync_processes("balance-lengths")
    out, summary = balance_lengths(records, fmt)
    if jax.process_index() == 0:
        print(f"balance-lengths: {summary['longer']} pairs with a longer chosen side (weight "
              f"{summary['longer_weight']:.4g}), {summary['shorter']} shorter ({summary['shorter_weight']:.4g}), "
              f"{summary['equal']} equal (1)", flush=True)
    return out


def pair_layout(shared_prefix: bool) -> str:
    return "shared_prefix" if shared_prefix else "rows"


UNIT = RecordUnit(kind="preference", objective=objective, layout=lambda cfg: pair_layout(cfg.dpo.shared_prefix),
                  precompute=precompute)
