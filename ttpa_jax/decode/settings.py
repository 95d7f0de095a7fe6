"""Decoding and TPS settings, defined once and nested into every command line that takes them.

``Decoding`` is how completions are decoded (``generate``, ``sample``, evaluation): the token budget,
the batch, the next-token rule and stop strings. ``TPSConfig`` is where Token-level Preference
Sampling branches and how wide. tyro nests them: ``--decoding.max-new-tokens 128``,
``--tps.epsilon 0.2``. This module imports no JAX, so settings load without it.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

DEFAULT_BUCKET = 32  # prompt widths are padded to multiples of this (decode.loop.prompt_bucket)


@dataclasses.dataclass(frozen=True)
class Decoding:
    """How completions are decoded."""

    max_new_tokens: int = 256
    """Most tokens generated per prompt (per candidate when sampling pairs)."""
    batch_size: int = 8
    """Prompts decoded together."""
    temperature: float = 0.0
    """Sampling temperature; 0 is greedy decoding (TPS always decodes greedily)."""
    top_k: int = 0
    """Sample from the k most likely tokens only (0: no limit)."""
    top_p: float = 1.0
    """Sample from the smallest set of tokens whose probability reaches top_p (1: no limit)."""
    seed: int = 0
    """Sampling seed; a prompt's sample depends only on the seed and its index."""
    stop: tuple[str, ...] = ()
    """Stop strings: a completion ends right after the first one it contains (e.g. </tool_call>);
    an EOS token always ends it."""
    bucket: int = DEFAULT_BUCKET
    """Prompt widths are padded to buckets (multiples of this, coarser for long prompts), so varied
    lengths share compiled loops."""

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.bucket < 1:
            raise ValueError(f"bucket must be at least 1, got {self.bucket}")

    def sampling(self):
        """The next-token rule (``decode.rules.Sampling``)."""
        from ttpa_jax.decode.rules import Sampling  # imported here: rules needs JAX, this module does not

        return Sampling(self.temperature, self.top_k, self.top_p)


@dataclasses.dataclass(frozen=True)
class TPSConfig:
    """Where Token-level Preference Sampling branches and how wide.

    The greedy decode records, per step, the top-1 minus top-2 probability (the gap). A step may be
    a branch point when (1) it lies where branching is allowed (``branch_in``; never the step that
    emits EOS) and (2) its most likely alternative has probability >= ``min_alt_prob``. Among those,
    the branch points are the steps whose gap is below ``epsilon``; with the dynamic threshold
    (``dynamic_m`` > 0), when fewer than ``dynamic_m`` allowed steps fall below epsilon the
    ``dynamic_m`` smallest gaps are taken instead; then at most ``max_branch_points``, smallest gaps
    first. At each point each of the top-``top_k`` tokens other than the greedy one (EOS excluded,
    probability >= ``min_alt_prob``) is forced and the branch decodes greedily to its end.

    ``anchor = "gold"`` (this project's option, not the TTPA paper's) branches from the gold
    completion instead of the greedy decode on tool-call turns (see ``anchor``).
    """

    epsilon: float = 0.1
    """Branch where the top-1 minus top-2 probability gap is below this."""
    top_k: int = 2
    """Tokens considered per branch point; the top_k - 1 most likely ones other than the greedy
    token are forced, one branch each (k >= 2; k = 3 makes two branches per point)."""
    dynamic_m: int = 0
    """Dynamic threshold: when fewer than m allowed steps have a gap below epsilon, branch at the m
    allowed steps with the smallest gaps instead, whatever their gap (0: off, epsilon alone)."""
    max_branch_points: int = 4
    """Most branch points per prompt (those with the smallest gaps)."""
    min_alt_prob: float = 0.05
    """An alternative token is forced only when its probability is at least this; a step whose
    alternatives all fall below it is no branch point (0: no minimum)."""
    branch_in: Literal["calls", "anywhere"] = "calls"
    """On tool-call turns, where branch points may fall: "calls" only inside tool-call spans (from
    the <tool_call> tag or the call's JSON start to its end); "anywhere" any generated step. The
    EOS step is never a branch point."""
    anchor: Literal["greedy", "gold"] = "greedy"
    """What tool-call turns branch from. "greedy": the model's greedy decode (TTPA's TPS). "gold" (this
    project's option, not the paper's): the gold completion read by the model in one forward pass;
    branch at the gold steps inside the call where the model's top-1 is not the gold token or the
    top-1/top-2 gap is below epsilon (mismatches first, then smallest gaps; dynamic_m and
    max_branch_points as above), forcing the model's most likely token other than the gold one and
    continuing greedily. Each pair: chosen = the gold completion, rejected = that branch, kept when
    it scores at least --margin below the gold (an equivalent alternative is not pushed down).
    One alternative per point (top_k is not used); answer turns branch from the greedy decode."""
    answer_turns: bool = True
    """Also sample final-answer turns (after tool results), scored by whether the answer uses the
    values the tools returned (the return-value metric); branch points anywhere but EOS."""

    def __post_init__(self):
        if self.top_k < 2:
            raise ValueError(f"top_k must be at least 2, got {self.top_k}")
        if self.dynamic_m < 0 or self.max_branch_points < 1:
            raise ValueError("dynamic_m must be >= 0 and max_branch_points >= 1")
        if not 0 <= self.min_alt_prob <= 1:
            raise ValueError(f"min_alt_prob must be in [0, 1], got {self.min_alt_prob}")
