"""Return-value parsing: does a final answer carry the values the tools returned?

The rule of the fine-grained evaluation (``judge_answer``, ``return_value_accuracy``), for an
``answer`` turn (assistant text after tool results of the current user request):

1. The *result values* are the scalar leaves (strings and numbers; not booleans, nulls or keys) of
   the tool results since the last user message, each result decoded as JSON when it is JSON and
   taken as one string leaf otherwise.
2. The values *that matter* are the result values the reference answer mentions, less the *echoed
   inputs*: values that a user message before the turn, or a scalar argument of a tool call before
   it, already states (``states``: a string as whole words, a number written with its exact value).
   Those are what the user asked about, not what the tool returned. A turn with no value that
   matters cannot be judged and is counted apart (whatever the prediction).
3. A judged turn is wrong, for the first of these reasons that applies:
   ``tool_call``: the prediction holds a tool call (``calls.parse`` finds at least one; the same test
   as ``no_call_accuracy``): the model did not stop calling tools;
   ``echo``: the prediction echoes the tool output instead of reading it (``echoes_tool_output``):
   (a) it contains a tool-response marker (``<tool_response>``, ``</tool_response>``, Llama's
   ``ipython<|end_header_id|>``), or (b) with all whitespace removed it contains the whole text of
   one tool result of at least ``ECHO_MIN_CHARS`` (20) characters (whitespace removed too), or
   (c) JSON objects or arrays make up at least half of its non-whitespace characters;
   ``missing_values``: it does not mention every value that matters.
   Otherwise it is correct (``ok``).

The earlier rule (``check_answer``, reported as ``return_value_accuracy_v1``): the values that matter
are all the result values the reference mentions (echoed inputs included), and the answer is correct
when it mentions each of them; a tool call or an echo of the results is judged only by that.

*Mentions*: a string leaf appears as whole words after ``normalize_text`` (case, punctuation and
spacing ignored); a number appears as a number in the text that equals the leaf rounded to the
decimals printed (``14.2345`` is mentioned by ``14.23`` and by ``14``; ``1,234`` reads as 1234).
"""
from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ttpa_jax.tools.calls import Format, calls_from_message, parse, parse_value
from ttpa_jax.tools.schema import is_number

ECHO_MIN_CHARS = 20  # a tool result this long (whitespace removed) found whole in an answer is an echo
TOOL_RESPONSE_MARKERS = ("<tool_response>", "</tool_response>", "ipython<|end_header_id|>")
REASONS = ("ok", "tool_call", "echo", "missing_values", "unjudged")


def normalize_text(text: str) -> str:
    """Case-folded, NFKC, punctuation turned into spaces, whitespace collapsed: the words of a
    text, for finding a value in an answer as whole words. (Gold argument values are compared with
    BFCL's rule instead, ``gold_values.standardize_string``, which drops spaces and so cannot tell
    word boundaries.) A string made only of punctuation keeps its characters.
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    spaced = "".join(" " if unicodedata.category(c).startswith("P") else c for c in folded)
    words = " ".join(spaced.split())
    return words if words or not folded.strip() else " ".join(folded.split())


_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def result_values(tool_results: Sequence[str]) -> list[str | int | float]:
    """The scalar leaves of the tool results, in order, without repeats."""
    roots = []
    for content in tool_results:
        try:
            roots.append(json.loads(content))
        except (ValueError, RecursionError):
            roots.append(content)
    return _leaves(roots)


def _leaves(roots: Sequence[Any]) -> list[str | int | float]:
    """Non-empty strings and finite numbers inside decoded JSON values, in order, without repeats."""
    leaves: list[Any] = []
    for root in roots:
        stack = [root]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                stack.extend(reversed(list(node.values())))
            elif isinstance(node, list):
                stack.extend(reversed(node))
            elif (isinstance(node, str) and normalize_text(node)) or (is_number(node) and math.isfinite(node)):
                if not any(type(node) is type(x) and node == x for x in leaves):
                    leaves.append(node)
    return leaves


def _numbers_in(text: str) -> list[tuple[float, int]]:
    """``(value, decimals printed)`` for each number written in the text."""
    out = []
    for m in _NUMBER.finditer(text):
        raw = m.group(0).replace(",", "")
        decimals = len(raw.split(".")[1]) if "." in raw else 0
        out.append((float(raw), decimals))
    return out


def mentions(text: str, value: Any) -> bool:
    """Whether ``text`` mentions ``value`` (see the module doc for the rules): the one rule for "the
    text uses this value", shared by construction's checks and the evaluation. A boolean, a null, an
    empty string or a non-finite number is never mentioned (no text states it as a value)."""
    if isinstance(value, bool) or value is None or (is_number(value) and not math.isfinite(value)):
        return False
    if not isinstance(value, (str, int, float)):
        return False
    if isinstance(value, str):
        needle = normalize_text(value)
        return bool(needle) and f" {needle} " in f" {normalize_text(text)} "
    return any(math.isclose(round(value, d), shown, rel_tol=1e-9, abs_tol=1e-9) for shown, d in _numbers_in(text))


def check_answer(prediction: str, reference: str, tool_results: Sequence[str]) -> tuple[list[Any], list[Any]]:
    """``(values that matter, those the prediction mentions)`` for one answer turn under the earlier
    rule (module doc; ``return_value_accuracy_v1``): every result value the reference mentions."""
    needed = [v for v in result_values(tool_results) if mentions(reference, v)]
    return needed, [v for v in needed if mentions(prediction, v)]


def states(text: str, value: Any) -> bool:
    """Whether ``text`` states ``value`` in full: a string as in ``mentions``, a number only when
    written with its exact value (``14.26`` is not stated by ``14.3``). The test for echoed inputs."""
    if is_number(value) and math.isfinite(value):
        return any(math.isclose(value, shown, rel_tol=1e-9, abs_tol=1e-9) for shown, _ in _numbers_in(text))
    return mentions(text, value)


def input_texts(prompt: Sequence[Mapping[str, Any]]) -> list[str]:
    """What the user and the calls supplied before a turn: each user message's content and each
    scalar argument of each assistant tool call (numbers written out), one text each."""
    texts, arguments = [], []
    for message in prompt:
        if message.get("role") == "user":
            content = message.get("content") or ""
            texts.append(content if isinstance(content, str) else json.dumps(content))
        elif message.get("role") == "assistant":
            try:
                arguments += [call["arguments"] for call in calls_from_message(dict(message))]
            except ValueError:  # a malformed call in the context supplies no argument
                pass
    return texts + [_number_text(v) if is_number(v) else v for v in _leaves(arguments)]


def _number_text(value: int | float) -> str:
    written = repr(value)
    return f"{value:f}" if "e" in written else written


def _squeeze(text: str) -> str:
    return "".join(text.split())


def json_share(text: str) -> float:
    """The share of ``text``'s non-whitespace characters that lie inside JSON objects or arrays
    (each decoded from a ``{`` or ``[``, left to right, without overlap); 0.0 for blank text."""
    total, inside, pos = len(_squeeze(text)), 0, 0
    decoder = json.JSONDecoder()
    while total:
        starts = [i for i in (text.find("{", pos), text.find("[", pos)) if i >= 0]
        if not starts:
            break
        start = min(starts)
        try:
            _, end = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            pos = start + 1
            continue
        inside += len(_squeeze(text[start:end]))
        pos = end
    return inside / total if total else 0.0


def echoes_tool_output(text: str, tool_results: Sequence[str]) -> bool:
    """Whether an answer echoes the tool output instead of reading it (rule 3 of the module doc:
    a tool-response marker, a whole tool result of at least ``ECHO_MIN_CHARS`` characters with
    whitespace removed, or JSON making up at least half of it)."""
    if any(marker in text for marker in TOOL_RESPONSE_MARKERS):
        return True
    squeezed = _squeeze(text)
    if any(len(r) >= ECHO_MIN_CHARS and r in squeezed for r in map(_squeeze, tool_results)):
        return True
    return json_share(text) >= 0.5


@dataclass(frozen=True)
class AnswerVerdict:
    """One answer turn under the rule of the module doc.

    needed: the values that matter (empty: the turn is not judged).
    found:  those the prediction's text mentions (whatever the reason).
    reason: ``ok``, ``tool_call``, ``echo``, ``missing_values``, or ``unjudged`` (no value matters and
            the prediction is neither a call nor an echo).
    """

    needed: list[Any] = field(default_factory=list)
    found: list[Any] = field(default_factory=list)
    reason: str = "unjudged"

    @property
    def judged(self) -> bool:
        return bool(self.needed)

    @property
    def correct(self) -> bool:
        return self.judged and self.reason == "ok"


def judge_answer(prediction: Any, reference: str, tool_results: Sequence[str],
                 prompt: Sequence[Mapping[str, Any]] = (), format: Format = "auto") -> AnswerVerdict:
    """The verdict for one answer turn: ``prediction`` is raw model text (or calls already parsed),
    ``prompt`` the messages before the turn (where the echoed inputs come from)."""
    inputs = input_texts(prompt)
    needed = [v for v in result_values(tool_results)
              if mentions(reference, v) and not any(states(t, v) for t in inputs)]
    text = prediction if isinstance(prediction, str) else ""
    found = [v for v in needed if mentions(text, v)]
    if (parse(prediction, format) if isinstance(prediction, str) else parse_value(prediction)).calls:
        reason = "tool_call"
    elif echoes_tool_output(text, tool_results):
        reason = "echo"
    elif not needed:
        reason = "unjudged"
    else:
        reason = "ok" if len(found) == len(needed) else "missing_values"
    return AnswerVerdict(needed, found, reason)
