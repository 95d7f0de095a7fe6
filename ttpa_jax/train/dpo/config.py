"""``train dpo``'s settings: the shared ``RunArgs`` plus ``DpoConfig`` (flags without a prefix:
``--beta``, ``--loss-type``, ...). No JAX."""

from __future__ import annotations

import dataclasses
from typing import Annotated, ClassVar, Literal

import tyro

from ttpa_jax.core.errors import ConfigError
from ttpa_jax.train.config import RunArgs


@dataclasses.dataclass(frozen=True)
class DpoConfig:
    """DPO objective (``train dpo``)."""

    beta: float = 0.1
    """Temperature of the implicit reward: rewards are beta * (policy - reference) log-probs."""
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    """sigmoid: DPO; ipo: squared loss to 1/(2 beta); hinge: SLiC hinge loss."""
    label_smoothing: float = 0.0
    """Conservative DPO: probability that a preference label is flipped (sigmoid loss only)."""
    dpop_lambda: float = 0.0
    """DPO-Positive (arXiv 2402.13228): the margin h (difference of the chosen and rejected log-ratios,
    sequence log-probs) becomes h - lambda * max(0, ref(chosen) - policy(chosen)), so a pair whose
    chosen side falls below the reference is pushed back up (pairs that differ in one token otherwise
    lower both sides). sigmoid: -log sigmoid(beta * that); hinge: relu(1 - beta * that). Not defined
    for ipo or with label_smoothing. Logs dpop/penalty (the mean of max(0, ref - policy) of the chosen
    sides) and dpop/chosen_below_ref (the share of pairs where it is > 0)."""
    sft_weight: float = 0.0
    """Weight of an extra SFT term (mean NLL per chosen completion token, over the batch)."""
    sft_tokens: Literal["all", "after_branch"] = "all"
    """Which chosen tokens the SFT term counts. all: every completion token of each pair's chosen side;
    after_branch: only those from the pair's branch point on (the first token where its chosen and
    rejected ids differ; none when the chosen side is a prefix of the rejected one). Per pair: a chosen
    sequence in several pairs counts once per pair, from each pair's own branch point, in either
    layout (--shared-prefix or not)."""
    balance_lengths: bool = False
    """Weight pairs so that those whose chosen completion is longer than the rejected one and those
    whose chosen completion is shorter carry equal total weight (pairs of equal length weigh 1):
    with n_long and n_short such pairs, weights (n_long + n_short) / (2 n_long) and
    (n_long + n_short) / (2 n_short), so they average 1 over the data (all 1 when either kind is
    missing). Computed once from the whole tokenized pair file (written next to it as
    preference-balanced.*); the DPO term is then the sum of weight x loss over the batch's pairs
    divided by their number. The SFT term is not weighted."""
    precompute_ref: bool = False
    """Compute reference log-probs once before training and store them with the tokenized data."""
    shared_prefix: bool = True
    """What a batch's sequences share runs once: the pairs of one prompt form a group (its prompt and the
    prefix all its sequences share once, then each distinct sequence's remainder once, attending to
    the shared part and itself), groups packed into rows. The same losses and gradients as two full
    rows per pair, for fewer tokens; with several processes one pair per row."""

    def __post_init__(self):
        check_dpop(self.dpop_lambda, self.loss_type, self.label_smoothing)


def check_dpop(dpop_lambda: float, loss_type: str, label_smoothing: float) -> None:
    """Raise ``ConfigError`` for a DPO-Positive setting that is not defined."""
    if dpop_lambda < 0:
        raise ConfigError(f"dpop_lambda must be >= 0, got {dpop_lambda}")
    if dpop_lambda and loss_type == "ipo":
        raise ConfigError("dpop_lambda is defined for the sigmoid and hinge losses, not loss_type ipo")
    if dpop_lambda and label_smoothing:
        raise ConfigError("dpop_lambda is not defined with label_smoothing (conservative DPO): set one of them to 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DpoArgs(RunArgs):
    """``train dpo``: DPO on {prompt, chosen, rejected, tools} preference records."""

    objective: ClassVar[str] = "dpo"

    dpo: Annotated[DpoConfig, tyro.conf.OmitArgPrefixes] = DpoConfig()
