"""Where a generated token falls: inside a tool-call span (and there in the call's name, an argument
key or an argument value) or outside every call. Pure Python; TPS uses it to branch only inside
calls, the pair audit to report where branch points fall.

A tool-call span runs from a ``<tool_call>`` tag to the end of its ``</tool_call>`` (or the end of
the text when unclosed); without tags, from each top-level ``{`` that opens a call (its first key ``"name"`` or
``"function"``) to its matching ``}`` (Llama 3's JSON calls). Inside a span the call's JSON is scanned character by character: the string (or
number) that is the value of the call's ``"name"`` is ``name``; a key of its ``"arguments"`` /
``"parameters"`` object is ``key``; anything inside an argument's value (strings, numbers, nested
objects) is ``value``; the rest (tags, braces, the ``"name"``/``"arguments"`` keys, separators) is
``syntax``. Characters outside every span are ``outside``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

LOCATIONS = ("name", "key", "value", "syntax", "outside")
OPEN, CLOSE = "<tool_call>", "</tool_call>"
_ARGS = ("arguments", "parameters")
_CALL_START = re.compile(r'\{\s*"(?:name|function)"\s*:')


def _json_end(text: str, start: int) -> int:
    """Index just past the JSON value starting with the ``{`` at ``start`` (len(text) if unclosed)."""
    depth, in_str, esc = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_str:
            esc, in_str = (not esc and ch == "\\"), in_str if (esc or ch != '"') else False
            continue
        if ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def call_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of the tool calls in ``text``."""
    spans, i = [], 0
    while (s := text.find(OPEN, i)) >= 0:
        e = text.find(CLOSE, s + len(OPEN))
        end = len(text) if e < 0 else e + len(CLOSE)
        spans.append((s, end))
        i = end
    if spans:
        return spans
    i = 0
    while (s := text.find("{", i)) >= 0:
        end = _json_end(text, s)
        if _CALL_START.match(text, s):  # a call's JSON, not any JSON (e.g. a made-up tool response)
            spans.append((s, end))
        i = end
    return spans


def _label(path: list[str], is_key: bool) -> str:
    """Location of a key (``is_key``) or value token at ``path`` (keys from the call object down)."""
    if is_key:
        if len(path) == 1 and path[0] in _ARGS:
            return "key"
        return "value" if len(path) >= 2 and path[0] in _ARGS else "syntax"
    if path == ["name"]:
        return "name"
    return "value" if path and path[0] in _ARGS else "syntax"


def _in_value(stack: list[list]) -> bool:
    keys = _keys(stack)
    return len(keys) >= 2 and keys[0] in _ARGS


def _label_call(text: str, out: list[str], start: int, end: int) -> None:
    """Label ``out[start:end]`` for one call span (see the module doc)."""
    stack: list[list] = []  # frames [kind "obj"|"arr", key of the current member or None, "key"|"value"]
    i = start
    while i < end:
        ch = text[i]
        if ch == '"' and stack:
            j, esc = i + 1, False
            while j < end and (esc or text[j] != '"'):
                esc = not esc and text[j] == "\\"
                j += 1
            j = min(j + 1, end)
            top = stack[-1]
            is_key = top[0] == "obj" and top[2] == "key"
            out[i:j] = [_label(_keys(stack), is_key)] * (j - i)
            if is_key:
                top[1] = text[i + 1:j - 1]
            i = j
            continue
        if ch in "{[":
            if _in_value(stack):
                out[i] = "value"
            stack.append(["obj" if ch == "{" else "arr", None, "key"])
        elif ch in "}]":
            if stack:
                stack.pop()
            if _in_value(stack):
                out[i] = "value"
        elif ch == ":" and stack and stack[-1][0] == "obj":
            stack[-1][2] = "value"
        elif ch == "," and stack and stack[-1][0] == "obj":
            stack[-1][1], stack[-1][2] = None, "key"
        elif not ch.isspace() and stack and not (stack[-1][0] == "obj" and stack[-1][2] == "key"):
            out[i] = _label(_keys(stack), False)  # a number, true / false / null
        i += 1


def _keys(stack: list[list]) -> list[str]:
    """Member keys from the call object down (arrays add nothing; leading arrays of parallel calls
    and the call object itself are skipped)."""
    objs = [f for f in stack if f[0] == "obj"]
    return [str(f[1]) for f in objs if f[1] is not None]


def char_locations(text: str) -> list[str]:
    """One location (``LOCATIONS``) per character of ``text``."""
    out = ["outside"] * len(text)
    for s, e in call_spans(text):
        out[s:e] = ["syntax"] * (e - s)
        j = text.find("{", s, e)
        if j >= 0:
            _label_call(text, out, j, e)
    return out


def token_offsets(tokenizer, ids: Sequence[int]) -> list[tuple[int, int]]:
    """Character span of each token in ``tokenizer.decode(ids)`` (special tokens kept), from the
    decoded lengths of growing prefixes; a token that completes no character has an empty span."""
    spans, prev = [], 0
    for n in range(1, len(ids) + 1):
        cur = len(tokenizer.decode(list(ids[:n]), skip_special_tokens=False).rstrip("\ufffd"))
        cur = max(cur, prev)
        spans.append((prev, cur))
        prev = cur
    return spans


def token_locations(text: str, offsets: Sequence[tuple[int, int]]) -> list[str]:
    """The location of each token: that of its first non-space character (its first character when
    it is all spaces; ``outside`` past the text)."""
    chars = char_locations(text)
    out = []
    for a, b in offsets:
        idx = next((i for i in range(a, b) if not text[i].isspace()), a)
        out.append(chars[idx] if idx < len(chars) else "outside")
    return out
