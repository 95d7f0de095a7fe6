"""Building one instance, and the SFT record it becomes.

Reversed construction (the TTPA method): (a) the generator writes a scenario with concrete facts, no
question and no tool names; (b) it picks tools from the candidate set; (c) it makes calls one at a
time, each run by the tool's executor (or played by the generator when there is none) with every
result kept in memory for the next call; (d) it writes the final answer from the scenario and the
results; and only then (e) the user query that this answer solves. An instance may have a second
user turn: another round of (b)-(e) that sees the first.

Forward construction, the ablation baseline, writes the query first and then (b)-(d).

An error-recovery episode (``add_recovery``) adds, before one call of a built instance, the same
call with a plausible wrong argument value and the tool's error result; the call that follows is
its correction. Since the tool refuses it, the failed call changes nothing the generator wrote.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ttpa_jax.construct.generators.protocol import CallStep, Episode, Generator, Mode, ToolCall, Turn
from ttpa_jax.construct.toolbox import MistakeMaker
from ttpa_jax.tools.library import Tool

Executor = Callable[[Any], dict[str, Any]]


@dataclass(frozen=True)
class EpisodeSettings:
    """How episodes are drawn: construction order, call counts, follow-up turns, candidate set sizes."""

    mode: Mode = "reversed"
    """`reversed`: the query is written last (TTPA). `forward`: query first, the ablation baseline."""
    min_calls: int = 2
    """Fewest tool calls in one record (over all its user turns)."""
    max_calls: int = 7
    """Most tool calls in one record (over all its user turns)."""
    follow_up: float = 0.25
    """Fraction of records with a follow-up user turn answered with further calls."""
    min_candidates: int = 4
    """Fewest tools shown to the model per record (tools used plus distractors)."""
    max_candidates: int = 8
    """Most tools shown to the model per record."""


def draw_budget(rng: random.Random, s: EpisodeSettings) -> list[int]:
    """Calls per user turn: ``min_calls..max_calls`` in all; sometimes split over two turns."""
    total = rng.randint(s.min_calls, s.max_calls)
    if total >= 2 and rng.random() < s.follow_up:
        first = rng.randint(1, total - 1)
        return [first, total - first]
    return [total]


def draw_candidates(rng: random.Random, tools: list[Tool], domain_of: dict[str, str], size: int) -> list[Tool]:
    """A candidate set: mostly tools of one or two domains (related tools make hard distractors),
    plus one or two from elsewhere, in random order."""
    size = min(size, len(tools))
    domains = sorted({domain_of[t.name] for t in tools})
    focus = set(rng.sample(domains, min(len(domains), rng.choice([1, 2]))))
    inside = [t for t in tools if domain_of[t.name] in focus]
    outside = [t for t in tools if domain_of[t.name] not in focus]
    n_inside = min(len(inside), max(1, size - rng.randint(1, 2)) if outside else size)
    chosen = rng.sample(inside, n_inside)
    chosen += rng.sample(outside, min(len(outside), size - n_inside))
    if len(chosen) < size:  # small libraries: fill from whatever is left
        rest = [t for t in tools if t not in chosen]
        chosen += rng.sample(rest, size - len(chosen))
    rng.shuffle(chosen)
    return chosen


def new_episode(rng: random.Random, tools: list[Tool], domain_of: dict[str, str], s: EpisodeSettings) -> Episode:
    budget = draw_budget(rng, s)
    # Room for the calls' tools plus at least one distractor, as far as the bounds allow.
    size = max(rng.randint(s.min_candidates, s.max_candidates), min(sum(budget) + 1, s.max_candidates))
    return Episode(mode=s.mode, candidates=draw_candidates(rng, tools, domain_of, size), call_budget=budget, rng=rng)


async def _execute(gen: Generator, ep: Episode, call: ToolCall, executors: dict[str, Executor | None]) -> CallStep:
    if ep.tool(call.name) is None:
        return CallStep(call=call, result={"error": f"unknown tool {call.name!r}"})
    executor = executors.get(call.name)
    if executor is not None:
        return CallStep(call=call, result=executor(call.arguments))
    return CallStep(call=call, result=await gen.play_tool(ep, call), played_by_generator=True)


async def run_episode(gen: Generator, ep: Episode, executors: dict[str, Executor | None]) -> Episode:
    """Run the construction steps in the episode's mode; raises ``GenerationFailure``."""
    if ep.mode == "reversed":
        ep.scenario = await gen.write_scenario(ep)
    for budget in ep.call_budget:
        ep.turns.append(Turn())
        if ep.mode == "forward":
            ep.turn.query = await gen.write_query(ep)
        ep.turn.chosen = await gen.choose_tools(ep)
        while len(ep.turn.steps) < budget:
            call = await gen.next_call(ep)
            if call is None:
                break
            ep.turn.steps.append(await _execute(gen, ep, call, executors))
        ep.turn.answer = await gen.write_answer(ep)
        if ep.mode == "reversed":
            ep.turn.query = await gen.write_query(ep)
    return ep


def add_recovery(ep: Episode, rng: random.Random, mistakes: dict[str, MistakeMaker | None]) -> bool:
    """Give one call of the episode a failed attempt before it, if any call allows one.

    The call is drawn from ``rng`` among the successful calls of tools that run an executor and have
    a mistake (``mistakes``: tool name -> ``toolbox.mistake_for``); returns whether one was added.
    """
    steps = [s for s in ep.steps() if mistakes.get(s.call.name) and not s.played_by_generator
             and "error" not in s.result and s.failed_attempt is None]
    rng.shuffle(steps)
    for step in steps:
        made = mistakes[step.call.name](step.call.arguments, rng)
        if made is not None:
            wrong, error = made
            step.failed_attempt = CallStep(call=ToolCall(name=step.call.name, arguments=wrong), result=error)
            return True
    return False


def _call_messages(step: CallStep, call_id: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": "",
             "tool_calls": [{"type": "function", "id": call_id,
                             "function": {"name": step.call.name, "arguments": step.call.arguments}}]},
            {"role": "tool", "tool_call_id": call_id, "name": step.call.name,
             "content": json.dumps(step.result, ensure_ascii=False)}]


def to_record(ep: Episode, record_id: str, system_prompt: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The SFT record (docs/formats.md): messages, the candidate tools, id and meta."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    n = 0
    failed: list[int] = []
    for turn in ep.turns:
        messages.append({"role": "user", "content": turn.query})
        for step in turn.steps:
            if step.failed_attempt is not None:
                failed.append(n)
                messages += _call_messages(step.failed_attempt, f"call_{n}")
                n += 1
            messages += _call_messages(step, f"call_{n}")
            n += 1
        messages.append({"role": "assistant", "content": turn.answer})
    used = list(dict.fromkeys(step.call.name for step in ep.steps()))
    meta = {**meta, "scenario": ep.scenario, "turns": len(ep.turns), "num_calls": n, "tools_used": used,
            "distractors": [t.name for t in ep.candidates if t.name not in used],
            "played_by_generator": sorted({s.call.name for s in ep.steps() if s.played_by_generator})}
    if failed:
        meta["failed_calls"] = failed
    return {"id": record_id, "tools": [t.schema for t in ep.candidates], "messages": messages, "meta": meta}
