"""What the construction pipeline and a generator share: the episode under construction, the
generator's steps, and its counters.

An ``Episode`` is one instance being built. The pipeline (``ttpa_jax.construct.episodes``) owns the order of
the steps and runs the tools; a generator only writes: the scenario, the choice of tools, each next
call, the result of a tool that has no executor, the answer, and the user query.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ttpa_jax.core.errors import UserError
from ttpa_jax.tools.library import Tool

Mode = Literal["reversed", "forward"]


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass
class CallStep:
    """One call and its result, kept in memory and visible to every later step.

    ``failed_attempt`` is an error-recovery episode's failed call: the same tool called just before
    with one wrong argument value, and the tool's error result. The record shows it before this
    call; the generator never sees it.
    """

    call: ToolCall
    result: dict[str, Any]
    played_by_generator: bool = False
    failed_attempt: CallStep | None = None


@dataclass
class Turn:
    """One user turn: the query, the tools picked for it, its calls, and the final answer."""

    query: str = ""
    chosen: list[str] = field(default_factory=list)
    steps: list[CallStep] = field(default_factory=list)
    answer: str = ""


@dataclass
class Episode:
    """An instance under construction.

    ``call_budget[t]`` is the number of calls planned for turn ``t`` (one entry per user turn).
    ``rng`` is seeded from the run's seed, the record index and the attempt, so a template episode
    is reproducible. ``notes`` is the generator's private scratch space.
    """

    mode: Mode
    candidates: list[Tool]
    call_budget: list[int]
    rng: random.Random
    scenario: str = ""
    turns: list[Turn] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def turn(self) -> Turn:
        return self.turns[-1]

    def tool(self, name: str) -> Tool | None:
        return next((t for t in self.candidates if t.name == name), None)

    def steps(self) -> list[CallStep]:
        """All calls so far, over all turns, in order."""
        return [step for turn in self.turns for step in turn.steps]


class GenerationFailure(Exception):
    """The generator could not produce a step; ``reason`` is the counter it is filed under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class EndpointError(UserError):
    """The endpoint refuses every request (bad key, unknown model, wrong URL): the run stops."""


@dataclass
class GenerationStats:
    """Counters a generator keeps over a run."""

    requests: int = 0
    retries: int = 0
    malformed: int = 0
    structured_output_fallbacks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_reported: bool = False


class Generator(Protocol):
    """The steps of dataset construction that a generator writes."""

    stats: GenerationStats

    def describe(self) -> dict[str, Any]:
        """Settings recorded in each record's ``meta`` (never a credential)."""

    async def write_scenario(self, ep: Episode) -> str:
        """(a) A situation with concrete facts, no question and no tool names."""

    async def choose_tools(self, ep: Episode) -> list[str]:
        """(b) Names of the candidate tools this turn will use."""

    async def next_call(self, ep: Episode) -> ToolCall | None:
        """(c) The next call of this turn, seeing every earlier result; ``None`` to stop."""

    async def play_tool(self, ep: Episode, call: ToolCall) -> dict[str, Any]:
        """The result of a call to a tool that has no executor."""

    async def write_answer(self, ep: Episode) -> str:
        """(d) The assistant's final answer to this turn, from the scenario and the results."""

    async def write_query(self, ep: Episode) -> str:
        """(e) The user's message for this turn (last in reversed mode, first in forward mode)."""

    async def aclose(self) -> None:
        """Release connections."""
