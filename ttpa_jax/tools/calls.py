"""Tool calls in assistant text: render calls into a model's format, parse model output back.

Two model formats are supported, plus a lenient fallback:

* ``qwen`` (Qwen2.5, Hermes style): optional text, then one or more blocks
  ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``.
* ``llama`` (Llama 3.1/3.2 JSON tool calling): ``{"name": ..., "parameters": {...}}``, optionally
  preceded by ``<|python_tag|>``, several separated by ``;`` or newlines; also the custom-tool form
  ``<function=name>{...}</function>``.
* generic JSON (used by ``auto`` when neither format is found): a JSON object, or a list of objects,
  with ``name`` and ``arguments``/``parameters`` anywhere in the text, e.g. inside a ```json fence.

A call is always ``{"name": str, "arguments": dict}``. Parsing never raises on model output: it
returns a ``ParseResult`` whose ``status`` says what happened, so scoring can tell an answer without
a call (``no_call``) from a broken attempt at one (``malformed``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ttpa_jax.core.arguments import decode_arguments  # defined in core: record normalisation uses it too

Format = Literal["qwen", "llama", "auto"]
Status = Literal["ok", "no_call", "malformed", "partial"]

PYTHON_TAG = "<|python_tag|>"
MAX_DEPTH = 64  # deeper JSON in model output is treated as malformed (keeps every later check iterative-safe)

_QWEN_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_LLAMA_FUNCTION = re.compile(r"<function=([^>\s]+)>(.*?)(?:</function>|$)", re.DOTALL)
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class ParseResult:
    """What a model output holds.

    calls:   the parsed calls, in output order, each ``{"name": str, "arguments": dict}``.
    status:  ``ok`` (calls and nothing broken), ``no_call`` (plain text), ``malformed`` (an attempt
             at a call that does not parse, and no call), ``partial`` (some calls parse, some do not).
    content: the text that is not a call (what precedes the calls in Qwen's format), stripped.
    errors:  one reason per broken block.
    """

    calls: list[dict[str, Any]]
    status: Status
    content: str = ""
    errors: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Single calls


def json_depth(obj: Any) -> int:
    """Nesting depth of a JSON value (a scalar is 0), computed without recursion."""
    depth, stack = 0, [(obj, 0)]
    while stack:
        node, d = stack.pop()
        depth = max(depth, d)
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return depth


def normalize_call(obj: Any) -> dict[str, Any]:
    """One call from any of the usual shapes, as ``{"name", "arguments"}``; ``ValueError`` otherwise.

    Accepted: ``{"name", "arguments"}``, ``{"name", "parameters"}`` (Llama), and OpenAI's
    ``{"type": "function", "function": {"name", "arguments"}}``; arguments as a dict or JSON string.
    """
    if isinstance(obj, dict) and isinstance(obj.get("function"), dict) and "name" not in obj:
        obj = obj["function"]
    if not isinstance(obj, dict):
        raise ValueError(f"a call must be a JSON object, got {type(obj).__name__}")
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a call needs a non-empty string 'name'")
    args = obj.get("arguments", obj.get("parameters"))
    arguments = decode_arguments(args)
    if json_depth(arguments) > MAX_DEPTH:
        raise ValueError(f"arguments nested deeper than {MAX_DEPTH}")
    return {"name": name.strip(), "arguments": arguments}


def _looks_like_call(obj: Any) -> bool:
    if isinstance(obj, dict) and isinstance(obj.get("function"), dict) and "name" not in obj:
        obj = obj["function"]
    return isinstance(obj, dict) and "name" in obj and ("arguments" in obj or "parameters" in obj)


def _mentions_call(value: Any) -> bool:
    """Whether a JSON value is an attempt at a call (an object naming a function, or a list of them)."""
    items = value if isinstance(value, list) else [value]
    return any(isinstance(v, dict) and ("name" in v or "function" in v) for v in items)


def _calls_in_value(value: Any) -> list[dict[str, Any]]:
    """A decoded JSON value as calls: an object, or a list of objects; ``ValueError`` otherwise."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("empty list of calls")
    return [normalize_call(item) for item in items]


def _decode_json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"not JSON ({e})") from None


# ---------------------------------------------------------------------------------------------
# Formats


def _parse_qwen(text: str) -> ParseResult:
    calls, errors = [], []
    for m in _QWEN_BLOCK.finditer(text):
        try:
            calls += _calls_in_value(_decode_json_value(m.group(1).strip()))
        except ValueError as e:
            errors.append(f"<tool_call> block {len(calls) + len(errors)}: {e}")
    start = text.find("<tool_call>")
    content = (text[:start] if start >= 0 else text).strip()
    return _result(calls, errors, content)


def _scan_json_values(text: str) -> tuple[list[Any], str]:
    """Consecutive JSON values separated by whitespace, ``;`` or ``,``; returns (values, rest)."""
    values, pos = [], 0
    while True:
        while pos < len(text) and (text[pos].isspace() or text[pos] in ";,"):
            pos += 1
        if pos >= len(text) or text[pos] not in "{[":
            return values, text[pos:]
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except (ValueError, RecursionError):
            return values, text[pos:]
        values.append(value)


def _parse_llama(text: str) -> ParseResult:
    body = text.replace(PYTHON_TAG, "\n").strip()
    calls, errors = [], []
    functions = list(_LLAMA_FUNCTION.finditer(body))
    if functions:
        for m in functions:
            try:
                calls.append(normalize_call({"name": m.group(1), "arguments": m.group(2).strip() or "{}"}))
            except ValueError as e:
                errors.append(f"<function={m.group(1)}>: {e}")
        return _result(calls, errors, body[: functions[0].start()].strip())
    if not body.startswith(("{", "[")):
        return ParseResult([], "no_call", body)
    values, rest = _scan_json_values(body)
    if not any(_mentions_call(v) for v in values) and not rest.startswith(("{", "[")):
        return ParseResult([], "no_call", body)
    for value in values:
        try:
            calls += _calls_in_value(value)
        except ValueError as e:
            errors.append(f"JSON value {len(calls) + len(errors)}: {e}")
    rest = rest.strip()
    if rest.startswith(("{", "[")):
        errors.append(f"JSON value {len(calls) + len(errors)} does not parse: {rest[:60]!r}")
        rest = ""
    return _result(calls, errors, rest)


def _parse_generic(text: str) -> ParseResult:
    """Every JSON object or list of objects in the text that looks like a call (name + arguments)."""
    calls, errors, pos = [], [], 0
    while True:
        starts = [i for i in (text.find("{", pos), text.find("[", pos)) if i >= 0]
        if not starts:
            break
        start = min(starts)
        try:
            value, end = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):
            pos = start + 1
            continue
        candidates = value if isinstance(value, list) else [value]
        if candidates and all(_looks_like_call(c) for c in candidates):
            try:
                calls += _calls_in_value(value)
            except ValueError as e:
                errors.append(f"JSON call at character {start}: {e}")
            pos = end
        else:
            pos = start + 1
    if not calls and not errors and '"name"' in text and ('"arguments"' in text or '"parameters"' in text):
        errors.append("text mentions a call (name and arguments) but holds no parsable JSON call")
    return _result(calls, errors, text.strip() if not calls else "")


def _result(calls: list[dict[str, Any]], errors: list[str], content: str) -> ParseResult:
    if calls and errors:
        status = "partial"
    elif calls:
        status = "ok"
    elif errors:
        status = "malformed"
    else:
        status = "no_call"
    return ParseResult(calls, status, content, errors)


def parse(text: Any, format: Format = "auto") -> ParseResult:
    """Parse model output into calls; never raises.

    ``auto`` picks Qwen when a ``<tool_call>`` tag is present, Llama when the text starts with a
    JSON value, ``<|python_tag|>`` or ``<function=``, and otherwise falls back to scanning the
    text for JSON calls. ``qwen`` and ``llama`` also fall back to the generic scan when their own
    markers are absent, so a call in a ```json fence is found whatever the format.
    """
    if not isinstance(text, str):
        return ParseResult([], "malformed", "", [f"model output must be text, got {type(text).__name__}"])
    stripped = text.strip()
    is_qwen = "<tool_call>" in text
    is_llama = PYTHON_TAG in text or "<function=" in text or stripped.startswith(("{", "["))
    if format == "qwen" or (format == "auto" and is_qwen):
        result = _parse_qwen(text) if is_qwen else ParseResult([], "no_call", stripped)
    elif format == "llama" or (format == "auto" and is_llama):
        result = _parse_llama(text)
    else:
        result = ParseResult([], "no_call", stripped)
    if result.status == "no_call":
        result = _parse_generic(text)
    return result


def parse_value(value: Any) -> ParseResult:
    """Like ``parse`` for output that is already decoded: a list of calls, one call, or anything.

    Never raises; entries that are not calls are reported as errors.
    """
    if isinstance(value, str):
        return parse(value)
    items = value if isinstance(value, list) else [value]
    calls, errors = [], []
    for i, item in enumerate(items):
        try:
            calls.append(normalize_call(item))
        except (ValueError, RecursionError) as e:
            errors.append(f"call {i}: {e}")
    return _result(calls, errors, "")


# ---------------------------------------------------------------------------------------------
# Rendering and OpenAI messages


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def render(calls: list[dict[str, Any]], format: Literal["qwen", "llama"] = "qwen", content: str = "") -> str:
    """Assistant text for ``calls`` in a model's own format, as its chat template writes it.

    Qwen: ``content`` then one ``<tool_call>`` block per call, newline-separated.
    Llama: one ``{"name", "parameters"}`` object per line (``content`` is not part of a Llama
    tool-call turn and must be empty).
    """
    calls = [normalize_call(c) for c in calls]
    if format == "qwen":
        blocks = [f"<tool_call>\n{_dumps({'name': c['name'], 'arguments': c['arguments']})}\n</tool_call>" for c in calls]
        return "\n".join(([content.strip()] if content.strip() else []) + blocks)
    if format == "llama":
        if content.strip():
            raise ValueError("the Llama tool-call format has no room for text next to the calls")
        return "\n".join(_dumps({"name": c["name"], "parameters": c["arguments"]}) for c in calls)
    raise ValueError(f"unknown tool-call format {format!r} (expected 'qwen' or 'llama')")


def calls_from_message(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The calls of an OpenAI assistant message (``tool_calls``, arguments dict or JSON string).

    Raises ``ValueError`` on a malformed entry: this reads data, not model output.
    """
    calls = []
    for i, tc in enumerate(message.get("tool_calls") or []):
        try:
            calls.append(normalize_call(tc))
        except ValueError as e:
            raise ValueError(f"tool_calls[{i}]: {e}") from None
    return calls


def message_from_calls(calls: list[dict[str, Any]], content: str = "") -> dict[str, Any]:
    """An OpenAI assistant message carrying ``calls`` (ids ``call_0``, ``call_1``, ...)."""
    tool_calls = [
        {"type": "function", "id": f"call_{i}", "function": {"name": c["name"], "arguments": c["arguments"]}}
        for i, c in enumerate(normalize_call(c) for c in calls)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def message_from_text(text: str, format: Format = "auto") -> dict[str, Any]:
    """An assistant message from raw model output: parsed calls as ``tool_calls``, the rest as content.

    Output that does not parse into any call is kept whole as content.
    """
    result = parse(text, format)
    if not result.calls:
        return {"role": "assistant", "content": text}
    return message_from_calls(result.calls, result.content)
