"""Rewards of the RL stage, as pure functions of one episode (no JAX).

An *episode* is what a rollout produced for one prompt: the completion of the tool-call turn (scored
against the prompt's gold calls), the tool results the calls returned, and the final answer the model
wrote after them (if it got that far). Components, each a float:

- ``esm``: the ESM score in [0, 1] (``tools.esm.score``) of the tool-call turn.
- ``tl``: TL-Training's error-category reward in [-2, 1] (``tl_reward``) of the tool-call turn.
- ``format``: 1 when the tool-call turn holds at least one call and nothing malformed, else 0.
- ``answer``: the share of the values the tools returned (error results left out) that the final
  answer mentions (``tools.return_values``); 0 without a final answer or without a returned value.

``--reward`` picks a weighted sum of them: ``esm``, ``tl``, ``esm+format``,
``0.5*esm+0.5*tl+0.2*format`` (``parse_reward_spec``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ttpa_jax.core.conversation import is_error_feedback
from ttpa_jax.tools import esm
from ttpa_jax.tools.calls import parse
from ttpa_jax.tools.return_values import mentions, result_values

COMPONENTS = ("esm", "tl", "format", "answer")


@dataclasses.dataclass(frozen=True)
class Episode:
    """What the rewards read of one rollout.

    completion:   text of the model's first turn (the one the gold calls answer).
    gold_calls:   ``{"name", "arguments"}`` gold calls of that turn.
    tools:        the prompt's tool schemas.
    tool_results: contents of the tool messages the episode appended, in order.
    final_answer: text of the last assistant turn when it came after tool results, else None.
    """

    completion: str
    gold_calls: Sequence[Mapping[str, Any]]
    tools: Sequence[Mapping[str, Any]]
    tool_results: Sequence[str] = ()
    final_answer: str | None = None


def format_reward(completion: str) -> float:
    """1.0 when the text holds at least one parsable call and no malformed block, else 0.0."""
    return 1.0 if parse(completion).status == "ok" else 0.0


def answer_reward(final_answer: str | None, tool_results: Sequence[str]) -> float:
    """Share of the returned values (results that are not errors) that the final answer mentions."""
    if not final_answer:
        return 0.0
    values = result_values([r for r in tool_results if not is_error_feedback(r)])
    if not values:
        return 0.0
    return sum(mentions(final_answer, v) for v in values) / len(values)


def component_rewards(episode: Episode, names: Sequence[str] = COMPONENTS) -> dict[str, float]:
    """The named components of one episode's reward."""
    out: dict[str, float] = {}
    for name in names:
        if name == "esm":
            out[name] = esm.score(episode.completion, episode.gold_calls, episode.tools).score
        elif name == "tl":
            out[name] = float(esm.tl_reward(episode.completion, episode.gold_calls, episode.tools))
        elif name == "format":
            out[name] = format_reward(episode.completion)
        elif name == "answer":
            out[name] = answer_reward(episode.final_answer, episode.tool_results)
        else:
            raise ValueError(f"unknown reward component {name!r} (known: {', '.join(COMPONENTS)})")
    return out


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """A weighted sum of reward components: ``terms`` is ``((weight, name), ...)``."""

    terms: tuple[tuple[float, str], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for _, n in self.terms))

    def total(self, components: Mapping[str, float]) -> float:
        return float(sum(w * components[n] for w, n in self.terms))

    def __call__(self, episode: Episode) -> tuple[float, dict[str, float]]:
        """(total reward, components) of one episode."""
        parts = component_rewards(episode, self.names)
        return self.total(parts), parts


_TERM = re.compile(r"^\s*(?:([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?([a-z_]+)\s*$")


def parse_reward_spec(text: str) -> RewardSpec:
    """``"esm"``, ``"esm+format"``, ``"0.5*esm+0.5*tl+0.2*format"`` -> RewardSpec; a term without a
    weight has weight 1. Raises ValueError naming the bad term."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("--reward: empty; give e.g. esm, tl, esm+format or 0.5*esm+0.5*tl+0.2*format")
    terms = []
    for raw in text.split("+"):
        m = _TERM.match(raw)
        if not m:
            raise ValueError(f"--reward {text!r}: cannot read the term {raw.strip()!r} (write WEIGHT*NAME or NAME)")
        weight, name = float(m.group(1)) if m.group(1) else 1.0, m.group(2)
        if name not in COMPONENTS:
            raise ValueError(f"--reward {text!r}: unknown component {name!r} (known: {', '.join(COMPONENTS)})")
        terms.append((weight, name))
    return RewardSpec(tuple(terms))
