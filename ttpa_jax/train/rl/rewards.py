"""Episode rewards of the RL stage (no JAX): ``tools.rewards``'s terms applied to one rollout.

An *episode* is what a rollout produced for one prompt: the completion of the tool-call turn (scored
against the prompt's gold calls), the tool results its calls returned, and the final answer the
model wrote after them (if it got that far). Components:

- ``esm``: the ESM score in [0, 1] of the tool-call turn (``esm_reward``);
- ``tl``: TL-Training's error-category reward in [-2, 1] of the tool-call turn (``tl_reward``);
- ``format``: 1 when the tool-call turn holds calls and nothing malformed (``format_reward``);
- ``answer``: the final answer's use of the returned values (``answer_reward``).

``--reward`` picks a weighted sum (``tools.rewards.parse_reward_spec``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ttpa_jax.tools.esm import ErrorWeights
from ttpa_jax.tools.rewards import COMPONENTS, REWARDS, RewardSpec, answer_reward, esm_reward, parse_reward_spec


@dataclasses.dataclass(frozen=True)
class Episode:
    """What the rewards read of one rollout.

    completion:   text of the model's first turn (the one the gold calls answer).
    gold_calls:   ``{"name", "arguments"}`` gold calls of that turn.
    tools:        the prompt's tool schemas.
    tool_results: contents of the tool messages the episode appended, in order.
    final_answer: text of the last assistant turn when it came after tool results, else None.
    completion_ids: token ids of the first turn (for token-level rewards of one's own).
    """

    completion: str
    gold_calls: Sequence[Mapping[str, Any]]
    tools: Sequence[Mapping[str, Any]]
    tool_results: Sequence[str] = ()
    final_answer: str | None = None
    completion_ids: tuple[int, ...] = ()


def component_rewards(episode: Episode, names: Sequence[str] = COMPONENTS,
                      esm: ErrorWeights | None = None) -> dict[str, float]:
    """The named components of one episode's reward (``esm`` scored with the ``--esm.*`` weights)."""
    out: dict[str, float] = {}
    for name in names:
        if name == "answer":
            out[name] = answer_reward(episode.final_answer, episode.tool_results)
        elif name == "esm":
            out[name] = float(esm_reward(episode.completion, episode.gold_calls, episode.tools, weights=esm))
        elif name in REWARDS:
            out[name] = float(REWARDS[name](episode.completion, episode.gold_calls, episode.tools))
        else:
            raise ValueError(f"unknown reward component {name!r} (known: {', '.join(COMPONENTS)})")
    return out


@dataclasses.dataclass(frozen=True)
class EpisodeReward:
    """``reward(episode) -> (total, components)`` for a ``--reward`` spec and the ``--esm.*`` weights."""

    spec: RewardSpec
    esm: ErrorWeights = ErrorWeights()

    @classmethod
    def parse(cls, text: str, esm: ErrorWeights = ErrorWeights()) -> EpisodeReward:
        return cls(parse_reward_spec(text), esm)

    def __call__(self, episode: Episode) -> tuple[float, dict[str, float]]:
        parts = component_rewards(episode, self.spec.names, self.esm)
        return self.spec.total(parts), parts
