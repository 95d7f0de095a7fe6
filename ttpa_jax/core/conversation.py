"""Record normalisation and turn enumeration, shared by every stage.

``normalize_record`` checks an SFT record (``{"messages", "tools", ...}``) and returns a clean copy:
tools in OpenAI form, tool-call arguments decoded into dicts, ``None`` content as ``""``. A record
that a stage cannot use raises ``DataError`` naming the place (``data.jsonl:17``) and the field
(``messages[2].tool_calls[0].function.arguments``). ``iter_turns`` walks a record's assistant turns
with the context each stage needs.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

import jsonschema

from ttpa_jax.core.arguments import decode_arguments
from ttpa_jax.core.jsonl import DataError

ROLES = ("system", "user", "assistant", "tool")


def _fail(where: str, field: str, reason: str) -> DataError:
    return DataError(f"{where}: {field}: {reason}")


def normalize_tools(tools: Any, where: str) -> list[dict[str, Any]]:
    """Tools as OpenAI function schemas ``{"type": "function", "function": {...}}``.

    Bare function dicts (``{"name", "parameters"}``) are wrapped. Each needs a non-empty string
    ``function.name`` (unique), and ``parameters`` (default: no parameters) must be a JSON Schema
    (checked against its meta-schema) of type ``object``.
    """
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _fail(where, "tools", f"expected a list, got {type(tools).__name__}")
    out, seen = [], set()
    for i, tool in enumerate(tools):
        field = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _fail(where, field, f"expected an object, got {type(tool).__name__}")
        fn = tool.get("function", tool)
        if not isinstance(fn, dict):
            raise _fail(where, f"{field}.function", "expected an object")
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _fail(where, f"{field}.function.name", "missing or not a non-empty string")
        if name in seen:
            raise _fail(where, f"{field}.function.name", f"duplicate tool name {name!r}")
        seen.add(name)
        params = fn.get("parameters", {"type": "object", "properties": {}})
        _check_parameters(params, where, f"{field}.function.parameters")
        out.append({"type": "function", "function": {**fn, "parameters": params}})
    return out


@functools.lru_cache(maxsize=4096)
def _schema_problem(params_json: str) -> tuple[str, str] | None:
    """``(path, reason)`` when the JSON-encoded schema fails its meta-schema; cached, since the same
    tools recur across records and the check is slow."""
    params = json.loads(params_json)
    validator = jsonschema.validators.validator_for(params, default=jsonschema.Draft202012Validator)
    try:
        validator.check_schema(params)
    except jsonschema.SchemaError as e:
        return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.path), e.message
    return None


def _check_parameters(params: Any, where: str, field: str) -> None:
    if not isinstance(params, dict):
        raise _fail(where, field, f"not a JSON Schema object (got {type(params).__name__})")
    problem = _schema_problem(json.dumps(params, sort_keys=True))
    if problem:
        raise _fail(where, field + problem[0], f"not a valid JSON Schema ({problem[1]})")
    if params.get("type", "object") != "object":
        raise _fail(where, f"{field}.type", f"must be 'object', got {params.get('type')!r}")


def _normalize_tool_call(tc: Any, where: str, field: str, tool_names: set[str] | None, index: int) -> dict[str, Any]:
    if not isinstance(tc, dict):
        raise _fail(where, field, f"expected an object, got {type(tc).__name__}")
    fn = tc.get("function")
    if not isinstance(fn, dict):
        raise _fail(where, f"{field}.function", "missing or not an object")
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _fail(where, f"{field}.function.name", "missing or not a non-empty string")
    if tool_names is not None and name not in tool_names:
        raise _fail(where, f"{field}.function.name", f"{name!r} is not among the record's tools")
    try:
        arguments = decode_arguments(fn.get("arguments"))
    except ValueError as e:
        raise _fail(where, f"{field}.function.arguments", str(e)) from None
    return {
        "type": "function",
        "id": str(tc.get("id") or f"call_{index}"),
        "function": {"name": name, "arguments": arguments},
    }


def normalize_message(msg: Any, where: str, field: str, tool_names: set[str] | None = None) -> dict[str, Any]:
    """One chat message, checked. ``tool_names``: when given, tool calls must name one of them."""
    if not isinstance(msg, dict):
        raise _fail(where, field, f"expected an object, got {type(msg).__name__}")
    role = msg.get("role")
    if role not in ROLES:
        raise _fail(where, f"{field}.role", f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
    out = dict(msg)
    content = msg.get("content")
    if role == "assistant":
        calls = msg.get("tool_calls") or []
        if not isinstance(calls, list):
            raise _fail(where, f"{field}.tool_calls", "expected a list")
        out["tool_calls"] = [
            _normalize_tool_call(tc, where, f"{field}.tool_calls[{i}]", tool_names, i) for i, tc in enumerate(calls)
        ]
        if not out["tool_calls"]:
            del out["tool_calls"]
        if content is None and not calls:
            raise _fail(where, f"{field}.content", "missing (an assistant message needs content or tool_calls)")
        out["content"] = "" if content is None else content
    elif role == "tool" and content is not None and not isinstance(content, str):
        out["content"] = json.dumps(content, ensure_ascii=False)
    elif content is None:
        raise _fail(where, f"{field}.content", "missing")
    if not isinstance(out["content"], str):
        raise _fail(where, f"{field}.content", f"expected a string, got {type(out['content']).__name__}")
    return out


def _normalize_messages(messages: Any, where: str, field: str, tool_names: set[str] | None) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise _fail(where, field, "missing or not a non-empty list")
    return [normalize_message(m, where, f"{field}[{i}]", tool_names) for i, m in enumerate(messages)]


def _tool_names(tools: list[dict[str, Any]]) -> set[str]:
    return {t["function"]["name"] for t in tools}


def normalize_record(obj: Any, where: str) -> dict[str, Any]:
    """A checked copy of an SFT record; other keys (``id``, ``meta``, ...) are carried through.

    Tool calls in the messages must name one of the record's tools.
    """
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    tools = normalize_tools(obj.get("tools"), where)
    messages = _normalize_messages(obj.get("messages"), where, "messages", _tool_names(tools))
    return {**obj, "messages": messages, "tools": tools}


def normalize_preference(obj: Any, where: str) -> dict[str, Any]:
    """A checked copy of a preference record ``{"prompt", "chosen", "rejected", "tools"}``.

    ``chosen`` and ``rejected`` are one assistant message each, given as a one-element list (TRL's
    conversational form) or as the message itself; they are returned as one-element lists. The
    rejected side may call tools that do not exist (that is often why it is rejected).
    """
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    tools = normalize_tools(obj.get("tools"), where)
    names = _tool_names(tools)
    out = {**obj, "tools": tools, "prompt": _normalize_messages(obj.get("prompt"), where, "prompt", names)}
    for side in ("chosen", "rejected"):
        value = obj.get(side)
        value = [value] if isinstance(value, dict) else value
        if not isinstance(value, list) or len(value) != 1:
            raise _fail(where, side, "expected one assistant message (a one-element list)")
        msg = normalize_message(value[0], where, f"{side}[0]", names if side == "chosen" else None)
        if msg["role"] != "assistant":
            raise _fail(where, f"{side}[0].role", f"expected 'assistant', got {msg['role']!r}")
        out[side] = [msg]
    return out


class Turn(NamedTuple):
    """One assistant turn of a record.

    index:        position of the assistant message in ``record["messages"]``.
    prompt:       the messages before it (what the model sees).
    message:      the assistant message itself (the reference).
    kind:         ``tool_call`` (it has tool calls), ``answer`` (text after tool results of the
                  current user request), or ``text`` (text with no tool result before it since
                  the last user message, e.g. a reply that needs no tool).
    tool_results: contents of the tool messages since the last user message (what an answer
                  should draw its values from).
    """

    index: int
    prompt: list[dict[str, Any]]
    message: dict[str, Any]
    kind: str
    tool_results: list[str]


def iter_turns(record: dict[str, Any]) -> Iterator[Turn]:
    """Each assistant turn of a normalised record, in order."""
    messages = record["messages"]
    results: list[str] = []
    for i, msg in enumerate(messages):
        role = msg["role"]
        if role == "user":
            results = []
        elif role == "tool":
            results.append(msg.get("content") or "")
        elif role == "assistant":
            kind = "tool_call" if msg.get("tool_calls") else "answer" if results else "text"
            yield Turn(i, messages[:i], msg, kind, list(results))


# TL-Training's error keywords (``code/mae/mae.py``), matched after ``_letters_and_digits``. Left out:
# its ``"error":`` and ``'error'`` (replaced by ``_ERROR_KEY``, which lets an empty or null error
# through) and ``'related_searches'`` (a key its search tool's failures named; a successful search
# result can hold it too).
ERROR_KEYWORDS = (
    "is not defined", "positional argument", "unexpected keyword", "ConnectionError", "not supported",
    "Invalid API call", "Response error", "Object of type SerpResults is not JSON serializable",
    "400 Client Error", "slice indices must be integers or None or have an __index__ method", "connection error",
)
# An "error" key (in JSON or a Python dict repr, quotes possibly escaped inside a string) whose value
# is not empty: "", '', null, None, false, False, [] and {} are no error.
_ERROR_KEY = re.compile(
    r"""\\?["']error\\?["']\s*+:\s*+(?!\\?["']\\?["']|null\b|None\b|false\b|False\b|\[\s*\]|\{\s*\})""",
    re.IGNORECASE,
)
_NOT_LETTER_OR_DIGIT = re.compile("[^\u4e00-\u9fa5a-zA-Z0-9]")


def _letters_and_digits(text: str) -> str:
    """Lowercased letters, digits and CJK characters only (TL-Training's ``sentence_extraction``)."""
    return _NOT_LETTER_OR_DIGIT.sub("", text).lower()


def is_error_feedback(content: str, keywords: tuple[str, ...] = ERROR_KEYWORDS) -> bool:
    """A tool message reports an error, judged by what it says (TL-Training's rule): it has an
    ``"error"`` key with a non-empty value (``{"error": ""}`` and ``{"error": null}`` are no error,
    ToolBench writes ``{"error": "", "response": ...}`` for a success), or its text starts with
    ``error``, or it contains one of ``keywords`` (letters and digits compared, case-insensitive:
    ``ConnectionError`` matches ``connection error``)."""
    text = (content or "").strip()
    if text.lower().startswith("error") or _ERROR_KEY.search(text):
        return True
    letters = _letters_and_digits(text)
    return any(_letters_and_digits(k) in letters for k in keywords)


def failed_calls(messages: list[dict[str, Any]]) -> dict[int, set[int]]:
    """``{assistant message index: indices of its tool calls whose response is an error}``, for each
    tool-call message with at least one failed call.

    The tool messages after an assistant message answer its calls: by ``tool_call_id`` when it
    names one of the calls' ids, else by position (the k-th tool message answers call k). An error
    response that cannot be placed this way marks every call of the message.
    """
    out: dict[int, set[int]] = {}
    for i, msg in enumerate(messages):
        calls = msg.get("tool_calls") if msg["role"] == "assistant" else None
        if not calls:
            continue
        ids = {tc.get("id"): k for k, tc in enumerate(calls) if tc.get("id") is not None}
        j = i + 1
        while j < len(messages) and messages[j]["role"] == "tool":
            response = messages[j]
            if is_error_feedback(response.get("content", "")):
                k = ids.get(response.get("tool_call_id"), j - i - 1)
                out.setdefault(i, set()).update([k] if k < len(calls) else range(len(calls)))
            j += 1
    return out


def mae_masked_messages(messages: list[dict[str, Any]]) -> set[int]:
    """Indices of assistant tool-call messages with at least one failed call (``failed_calls``):
    sampling leaves them out and evaluation does not score them. MAE's token weights mask only the
    failed calls' tokens (``train.token_weights``)."""
    return set(failed_calls(messages))
