"""Return-value parsing: does a final answer carry the values the tools returned?

Definition used by the fine-grained evaluation, for an ``answer`` turn:

1. The *result values* are the scalar leaves (strings and numbers; not booleans, nulls or keys) of
   the tool results since the last user message, each result decoded as JSON when it is JSON and
   taken as one string leaf otherwise.
2. The values *that matter* are the result values the reference answer mentions.
3. The predicted answer is correct when it mentions every value that matters. A turn whose
   reference mentions no result value cannot be judged and is counted apart.

*Mentions*: a string leaf appears as whole words after ``normalize_text`` (case, punctuation and
spacing ignored); a number appears as a number in the text that equals the leaf rounded to the
decimals printed (``14.2345`` is mentioned by ``14.23`` and by ``14``; ``1,234`` reads as 1234).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from ttpa_jax.tools.schema import is_number


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
    leaves: list[Any] = []
    for content in tool_results:
        try:
            stack = [json.loads(content)]
        except (ValueError, RecursionError):
            stack = [content]
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
    """``(values that matter, those the prediction mentions)`` for one answer turn."""
    needed = [v for v in result_values(tool_results) if mentions(reference, v)]
    return needed, [v for v in needed if mentions(prediction, v)]
