"""``train orpo``'s unit: ORPO (arXiv 2403.07691) as TRL computes it, on the preference batches of DPO.

With ``c``, ``r`` the mean per-token log-probs of a pair's chosen and rejected completions,

    log_odds = (c - r) - (log(1 - exp(c)) - log(1 - exp(r)))
    loss     = NLL(chosen tokens) + beta * mean over pairs of -log sigmoid(log_odds)

(``beta`` is the paper's lambda); the NLL is the mean over every chosen completion token of the batch.
No reference model: the step runs the policy only. Metrics: TRL's names (``rewards/*`` are beta times
the mean log-probs, ``logps/*`` the mean log-probs, ``nll_loss``, ``log_odds_ratio``, ``log_odds_chosen``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ttpa_jax.train.dpo.unit import finalize_pair_metrics, pair_layout, pair_metric_sums, pair_normalizers
from ttpa_jax.train.orpo.config import OrpoArgs
from ttpa_jax.train.scoring import pair_scores, pair_valid
from ttpa_jax.train.supervised import RecordUnit
from ttpa_jax.train.trainer import Objective


def log_odds_ratio(chosen, rejected):
    """[N] mean per-token log-probs (< 0) of each side -> [N] log odds(chosen) - log odds(rejected)."""
    return (chosen - rejected) - (jnp.log1p(-jnp.exp(chosen)) - jnp.log1p(-jnp.exp(rejected)))


def make_orpo(beta: float, logits_chunk: int = 0) -> Objective:
    def loss(model, reference, batch, ctx, norms):
        n, valid = batch.num_pairs, pair_valid(batch)  # [N]
        logps, counts, logit_sums = pair_scores(model, batch, ctx, logits_chunk)  # [2N] each
        pol_c, pol_r = logps[:n], logps[n:]
        # mean per-token log-probs; an empty slot gets -1 (finite, masked out below)
        mean_c = jnp.where(valid > 0, pol_c / jnp.maximum(counts[:n], 1), -1.0)
        mean_r = jnp.where(valid > 0, pol_r / jnp.maximum(counts[n:], 1), -1.0)
        log_odds = log_odds_ratio(mean_c, mean_r)
        ratio = jax.nn.log_sigmoid(log_odds) * valid
        nll = -pol_c.sum()
        total = nll / norms["chosen_tokens"] - beta * ratio.sum() / norms["pairs"]
        r_c, r_r = beta * mean_c * valid, beta * mean_r * valid
        sums = {
            "or_loss": -ratio.sum(), "pairs": valid.sum(), "nll": nll,
            "rewards/chosen": r_c.sum(), "rewards/rejected": r_r.sum(),
            "rewards/accuracies": ((r_c > r_r) * valid).sum(), "rewards/margins": (r_c - r_r).sum(),
            "log_odds_ratio": ratio.sum(), "log_odds_chosen": (log_odds * valid).sum(),
            **pair_metric_sums(pol_c, pol_r, logit_sums, counts, n),
            "logps/chosen": (mean_c * valid).sum(), "logps/rejected": (mean_r * valid).sum(),  # TRL's: per-token means
        }
        return total, sums

    def finalize(s):
        out = finalize_pair_metrics(s, ("rewards/chosen", "rewards/rejected", "rewards/accuracies",
                                        "rewards/margins", "log_odds_ratio", "log_odds_chosen"))
        out["nll_loss"] = s["nll"] / jnp.maximum(s["chosen_tokens"], 1e-6)
        out["loss"] = out["nll_loss"] + beta * s["or_loss"] / jnp.maximum(s["pairs"], 1)
        return out

    return Objective(pair_normalizers, loss, finalize)


def objective(cfg: OrpoArgs) -> Objective:
    return make_orpo(cfg.orpo.beta, cfg.logits_chunk)


UNIT = RecordUnit(kind="preference", objective=objective, layout=lambda cfg: pair_layout(cfg.orpo.shared_prefix))
