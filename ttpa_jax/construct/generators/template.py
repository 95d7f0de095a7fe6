"""The offline template generator: deterministic from a seed, built from the schemas and executors.

It plans an episode up front: which tools, with which literal argument values, and which arguments
are to be taken from an earlier result (a ``flight_id`` from a flight search). Calls are then made
one at a time; a chained argument is read from the results in memory. The query states every
literal value as written in the call, so that a small model can learn to copy it, and words each
request with the tool's phrasing (``toolbox.Phrasing``) inside a few sentence frames. The
vocabulary stays small on purpose: a tiny model trained from scratch for minutes must learn it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from ttpa_jax.construct.checks import render_number, salient_items
from ttpa_jax.construct.generators.protocol import Episode, GenerationFailure, GenerationStats, ToolCall
from ttpa_jax.construct.generators.values import OPTIONAL_RATE, sample_object, sample_value
from ttpa_jax.construct.toolbox import ToolSpec, executor_for, spec_for, vocab
from ttpa_jax.construct.toolbox.registry import Phrase
from ttpa_jax.tools.library import Tool

QUERY_LEADS = [("Please {}", "."), ("Could you {}", "?"), ("I need you to {}", "."), ("Can you {}", "?")]
FOLLOW_UP_LEADS = [("Thanks. Now please {}", "."), ("Great. Could you also {}", "?"),
                   ("One more thing: {}", ".")]
CONNECTORS = [", then ", " and then ", ", and after that "]
SCENARIO_LEADS = ["{person} needs to {body}.", "{person} is planning the day and has to {body}.",
                  "Today {person} wants to {body}."]
SCENARIO_FOLLOW_UP = " Afterwards {person} also wants to {body}."
ANSWER_FRAMES = ["{label}: {facts}.", "For {label}, I found {facts}.", "Results for {label}: {facts}."]
ERROR_FRAME = "I could not get {label}: {error}."
MAX_FACTS = 4


@dataclass
class PlannedCall:
    """A call decided when the episode is planned; ``chained`` arguments come from results."""

    tool: Tool
    spec: ToolSpec
    args: dict[str, Any]
    chained: list[str]
    resolved: set[str] = field(default_factory=set)


def render(value: Any) -> str:
    """A value as the query and the answer write it."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return render_number(value)
    if isinstance(value, list):
        return join_words([render(v) for v in value])
    if isinstance(value, dict):
        return join_words([render(v) for v in value.values()])
    return str(value)


def join_words(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def apply_phrase(phrase: Phrase, value: Any) -> str:
    if callable(phrase):
        return phrase(value)
    if isinstance(phrase, tuple):
        return phrase[0] if value else phrase[1]
    if isinstance(value, dict):
        return phrase.format(**{k: render(v) for k, v in value.items()})
    return phrase.format(render(value))


def capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def from_results(steps, key: str) -> Any:
    """The latest salient value named ``key`` among earlier results, or ``None``."""
    for step in reversed(steps):
        for k, v in salient_items(step.result, step.call.arguments):
            if k == key:
                return v
    return None


class TemplateGenerator:
    """Writes every step from templates; needs a bundled executor for every tool it is given."""

    def __init__(self, tools: list[Tool], chain_rate: float = 0.5):
        missing = [t.name for t in tools if spec_for(t) is None]
        if missing:
            raise ValueError("the template generator needs a bundled executor for every tool; none for: "
                             + ", ".join(missing) + " (use --generator openai to let the LLM play them)")
        self.tools = {t.name: t for t in tools}
        self.specs = {t.name: spec_for(t) for t in tools}
        self.chain_rate = chain_rate
        self.stats = GenerationStats()
        self.produces = {t.name: self._dry_run_keys(t) for t in tools}

    def describe(self) -> dict[str, Any]:
        return {"generator": "template"}

    async def aclose(self) -> None:
        return None

    # ------------------------------------------------------------ planning

    def _dry_run_keys(self, tool: Tool) -> set[str]:
        """Keys of the new (non-echo) values a tool returns, found by running it once."""
        spec = self.specs[tool.name]
        rng = random.Random(0)
        args = sample_object(tool.parameters, rng, 1.0, spec.values, joint=spec.joint(rng) if spec.joint else None)
        return {k for k, _ in salient_items(executor_for(tool)(args), args)}

    def _chainable(self, tool: Tool, planned: list[PlannedCall]) -> list[str]:
        chained = self.specs[tool.name].phrasing.chained
        return [p for p in tool.parameters.get("properties", {}) if p in chained
                and any(p in self.produces[q.tool.name] and q.tool.name != tool.name for q in planned)]

    def _plan_call(self, rng: random.Random, candidates: list[Tool], planned: list[PlannedCall]) -> PlannedCall:
        used = list(dict.fromkeys(pc.tool.name for pc in planned))
        pool = candidates if len(used) < max(1, len(candidates) - 1) else [t for t in candidates if t.name in used]
        already_chained = {pc.tool.name for pc in planned if pc.chained}
        consumers = [t for t in pool if t.name not in already_chained and self._chainable(t, planned)]
        if consumers and rng.random() < self.chain_rate:
            tool = rng.choice(consumers)
        else:
            fresh = [t for t in pool if t.name not in used]
            tool = rng.choice(fresh if fresh and rng.random() < 0.85 else pool)
        spec = self.specs[tool.name]
        chained = self._chainable(tool, planned)
        joint = spec.joint(rng) if spec.joint else None
        args = sample_object(tool.parameters, rng, OPTIONAL_RATE, spec.values, skip=frozenset(chained), joint=joint)
        return PlannedCall(tool=tool, spec=spec, args=args, chained=chained)

    def plan(self, ep: Episode) -> list[list[PlannedCall]]:
        """The episode's calls per turn, drawn once from ``ep.rng``."""
        if "plan" not in ep.notes:
            planned: list[PlannedCall] = []
            turns = []
            for budget in ep.call_budget:
                for _ in range(budget):
                    planned.append(self._plan_call(ep.rng, ep.candidates, planned))
                turns.append(planned[len(planned) - budget:])
            ep.notes["plan"] = turns
            ep.notes["person"] = vocab.person(ep.rng)
        return ep.notes["plan"]

    # ------------------------------------------------------------ wording

    def _clause(self, name: str, args: dict[str, Any], chained: set[str]) -> str:
        phrasing = self.specs[name].phrasing
        parts = [phrasing.ask]
        for p in self.tools[name].parameters.get("properties", {}):
            if p in chained:
                if phrasing.chained[p] not in parts:
                    parts.append(phrasing.chained[p])
            elif p in args:
                parts.append(apply_phrase(phrasing.params[p], args[p]))
        return " ".join(parts)

    def _join_clauses(self, rng: random.Random, clauses: list[str]) -> str:
        body = clauses[0]
        for clause in clauses[1:]:
            body += rng.choice(CONNECTORS) + clause
        return body

    def _label(self, name: str, args: dict[str, Any]) -> str:
        try:
            return self.specs[name].phrasing.label.format(**{k: render(v) for k, v in args.items()})
        except (KeyError, IndexError):
            return self.specs[name].phrasing.ask

    # ------------------------------------------------------------ the steps

    async def write_scenario(self, ep: Episode) -> str:
        plan = self.plan(ep)
        person = ep.notes["person"]
        text = ""
        for k, turn in enumerate(plan):
            body = self._join_clauses(ep.rng, [self._clause(pc.tool.name, pc.args, set(pc.chained)) for pc in turn])
            frame = ep.rng.choice(SCENARIO_LEADS) if k == 0 else SCENARIO_FOLLOW_UP
            text += frame.format(person=person, body=body)
        return text

    async def choose_tools(self, ep: Episode) -> list[str]:
        return list(dict.fromkeys(pc.tool.name for pc in self.plan(ep)[len(ep.turns) - 1]))

    async def next_call(self, ep: Episode) -> ToolCall | None:
        turn_plan = self.plan(ep)[len(ep.turns) - 1]
        if len(ep.turn.steps) >= len(turn_plan):
            return None
        pc = turn_plan[len(ep.turn.steps)]
        args = dict(pc.args)
        properties = pc.tool.parameters.get("properties", {})
        for p in pc.chained:
            value = from_results(ep.steps(), p)
            if value is None:
                args[p] = sample_value(p, properties[p], ep.rng, pc.spec.values)
            else:
                args[p] = value
                pc.resolved.add(p)
        return ToolCall(name=pc.tool.name, arguments={p: args[p] for p in properties if p in args})

    async def play_tool(self, ep: Episode, call: ToolCall) -> dict[str, Any]:
        raise GenerationFailure("no_executor", f"the template generator cannot play {call.name}")

    async def write_answer(self, ep: Episode) -> str:
        sentences = []
        for step in ep.turn.steps:
            label = self._label(step.call.name, step.call.arguments)
            if "error" in step.result:
                sentences.append(ERROR_FRAME.format(label=label, error=step.result["error"]))
                continue
            facts = [f"{k.replace('_', ' ')} {render(v)}".strip()
                     for k, v in salient_items(step.result, step.call.arguments)[:MAX_FACTS]]
            frame = ep.rng.choice(ANSWER_FRAMES)
            sentences.append(capitalize(frame.format(label=label, facts=join_words(facts) if facts else "done")))
        return " ".join(sentences)

    async def write_query(self, ep: Episode) -> str:
        k = len(ep.turns) - 1
        turn_plan = self.plan(ep)[k]
        if ep.mode == "reversed":
            clauses = [self._clause(step.call.name, step.call.arguments, pc.resolved)
                       for step, pc in zip(ep.turn.steps, turn_plan)]
        else:
            clauses = [self._clause(pc.tool.name, pc.args, set(pc.chained)) for pc in turn_plan]
        lead, end = ep.rng.choice(QUERY_LEADS if k == 0 else FOLLOW_UP_LEADS)
        return capitalize(lead.format(self._join_clauses(ep.rng, clauses))) + end
