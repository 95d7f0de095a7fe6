"""Prompts and reply schemas of the OpenAI-compatible generator, one per construction step.

Every step sends a system message and one user message. The user message starts with a
``# Step: <name>`` line, then the instructions, then ``CONTEXT:`` and a JSON object with what the
step may use (the candidate tools, the scenario, the calls and results so far). The reply is one
JSON object matching ``REPLY_SCHEMAS[step]``; the schemas are strict-mode compatible (every
property required, no extra properties), so values that are free-form JSON (call arguments, a
played tool result) travel as JSON text inside a string.
"""

from __future__ import annotations

import json
from typing import Any

from ttpa_jax.construct.checks import identifier_words
from ttpa_jax.construct.generators.protocol import Episode
from ttpa_jax.tools.library import Tool

SYSTEM_PROMPT = ("You help build training data for an assistant that calls tools. Follow the step's "
                 "instructions exactly and reply with one JSON object and nothing else.")
CONTEXT_MARKER = "CONTEXT:\n"


def _object(**props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


STRING = {"type": "string"}
REPLY_SCHEMAS: dict[str, dict[str, Any]] = {
    "scenario": _object(scenario=STRING),
    "tools": _object(tools={"type": "array", "items": STRING}),
    "call": _object(action={"type": "string", "enum": ["call", "finish"]}, name=STRING, arguments=STRING),
    "tool_result": _object(result=STRING),
    "answer": _object(answer=STRING),
    "query": _object(query=STRING),
}
REPLY_SCHEMAS["forward_query"] = REPLY_SCHEMAS["query"]

INSTRUCTIONS = {
    "scenario": (
        "Write a short, realistic scenario (2 to 5 sentences) in which a person needs help that some of "
        "the tools in CONTEXT can give, through about {calls} tool calls{rounds}. State the concrete facts "
        "the calls will need: names, places, dates as YYYY-MM-DD, times as HH:MM, amounts, codes and "
        "identifiers written exactly as a tool expects them. Describe the situation in the third person: "
        "no question, no request addressed to an assistant, and never mention tools, functions or "
        "parameter names. Reply {{\"scenario\": \"...\"}}."),
    "tools": (
        "Pick the tools this turn needs, by their exact names from CONTEXT.tools, in the order they will "
        "be used. The turn makes {calls} call(s); a tool may be used more than once. "
        "Reply {{\"tools\": [\"name\", ...]}}."),
    "call": (
        "Make the next tool call of this turn, or finish when the turn's needs are met ({left} call(s) "
        "planned are left). Use a tool from CONTEXT.tools. Copy every argument value exactly from "
        "{source} or from an earlier result in CONTEXT.calls_so_far; never invent a value. The arguments "
        "must satisfy the tool's JSON Schema. Reply {{\"action\": \"call\", \"name\": \"<tool>\", "
        "\"arguments\": \"<the arguments as a JSON object, in a string>\"}} or {{\"action\": \"finish\", "
        "\"name\": \"\", \"arguments\": \"{{}}\"}}."),
    "tool_result": (
        "You are the tool CONTEXT.tool. Return the JSON object it would return for CONTEXT.arguments: "
        "realistic and concrete values, consistent with the situation and earlier results, no prose. "
        "If the arguments cannot be served, return {{\"error\": \"<reason>\"}}. "
        "Reply {{\"result\": \"<the result as a JSON object, in a string>\"}}."),
    "answer": (
        "Write the assistant's final reply to the user for this turn, from the results in CONTEXT.calls. "
        "Report the values the tools returned exactly as they appear in the results (numbers as written). "
        "Do not mention tools or functions. Reply {{\"answer\": \"...\"}}."),
    "query": (
        "Write the user's message{follow_up} that led to the calls and the answer in CONTEXT. State in "
        "plain words every value the calls used, copied exactly as in their arguments (dates, times, "
        "numbers, names, codes), except values that the calls took from earlier tool results. Ask the way "
        "a person would. Never use any of these words: {forbidden}. Reply {{\"query\": \"...\"}}."),
    "forward_query": (
        "Write a realistic message from a user{follow_up} that needs about {calls} call(s) of the tools "
        "in CONTEXT.tools. State the concrete values the calls will need (dates as YYYY-MM-DD, times as "
        "HH:MM, amounts, names, codes). Never use any of these words: {forbidden}. "
        "Reply {{\"query\": \"...\"}}."),
}


def forbidden_words(tools: list[Tool]) -> str:
    """Tool names and multi-word parameter names, written as words, for the query prompts."""
    names = {" ".join(identifier_words(t.name)) for t in tools}
    names |= {" ".join(identifier_words(p)) for t in tools for p in t.param_names if len(identifier_words(p)) >= 2}
    return ", ".join(f"\"{n}\"" for n in sorted(names))


def _steps_json(ep: Episode, current_turn_only: bool) -> list[dict[str, Any]]:
    steps = ep.turn.steps if current_turn_only else ep.steps()
    return [{"name": s.call.name, "arguments": s.call.arguments, "result": s.result} for s in steps]


def _earlier_turns(ep: Episode) -> list[dict[str, Any]]:
    return [{"query": t.query, "answer": t.answer, "calls": [s.call.name for s in t.steps]} for t in ep.turns[:-1]]


def build_messages(step: str, ep: Episode, **extra: Any) -> list[dict[str, str]]:
    """The chat messages for one step; ``step`` is a key of ``INSTRUCTIONS``."""
    k = len(ep.turns) - 1
    calls = ep.call_budget[k] if ep.turns else sum(ep.call_budget)
    rounds = ", in two rounds: a first request and a follow-up" if len(ep.call_budget) > 1 else ""
    follow_up = " (a follow-up in the same conversation, after CONTEXT.earlier_turns)" if k > 0 else ""
    left = calls - len(ep.turn.steps) if ep.turns else calls
    source = "the scenario" if ep.mode == "reversed" else "the user's query"
    text = INSTRUCTIONS[step].format(calls=calls, rounds=rounds, follow_up=follow_up, left=left, source=source,
                                     forbidden=forbidden_words(ep.candidates))
    context = context_for(step, ep, **extra)
    user = f"# Step: {step}\n{text}\n\n{CONTEXT_MARKER}{json.dumps(context, ensure_ascii=False)}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def context_for(step: str, ep: Episode, **extra: Any) -> dict[str, Any]:
    situation = {"scenario": ep.scenario} if ep.mode == "reversed" else {"query": ep.turn.query if ep.turns else ""}
    if step in ("scenario", "forward_query"):
        return {"tools": [t.schema for t in ep.candidates], "earlier_turns": _earlier_turns(ep) if ep.turns else []}
    if step == "tools":
        return {**situation, "tools": [t.schema for t in ep.candidates], "earlier_turns": _earlier_turns(ep),
                "calls_so_far": _steps_json(ep, False)}
    if step == "call":
        chosen = [t for t in ep.candidates if t.name in ep.turn.chosen] or ep.candidates
        return {**situation, "tools": [t.schema for t in chosen], "earlier_turns": _earlier_turns(ep),
                "calls_so_far": _steps_json(ep, False)}
    if step == "tool_result":
        tool: Tool = extra["tool"]
        return {**situation, "tool": tool.schema, "arguments": extra["arguments"],
                "earlier_results": _steps_json(ep, False)}
    if step == "answer":
        return {**situation, "earlier_turns": _earlier_turns(ep), "calls": _steps_json(ep, True)}
    if step == "query":
        return {"scenario": ep.scenario, "earlier_turns": _earlier_turns(ep), "calls": _steps_json(ep, True),
                "answer": ep.turn.answer}
    raise KeyError(step)
