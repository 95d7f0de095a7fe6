"""OpenAI's chat-completions protocol as pure functions: a request body checked into a
``ChatRequest``, decoded text turned into a response or into stream chunks, errors as OpenAI's JSON.

Nothing here decodes or touches HTTP: ``serve.engine`` decodes, ``serve.app`` serves. A request this
server cannot honour raises ``RequestError`` (status 4xx, OpenAI's ``{"error": {...}}`` body) naming
the parameter. Model output is parsed with ``tools.calls.parse``, the parser evaluation scores with,
so a client receives the calls that ``evaluate`` would have counted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import uuid
from typing import Any

from ttpa_jax.text.detokenize import Completion
from ttpa_jax.tools.calls import Format, parse

# Parameters accepted and ignored when they ask for nothing this server would do differently.
IGNORED = ("user", "metadata", "store", "parallel_tool_calls", "service_tier", "prediction", "reasoning_effort",
           "modalities", "web_search_options", "verbosity", "prompt_cache_key", "safety_identifier")
NEUTRAL = {"frequency_penalty": 0, "presence_penalty": 0, "logprobs": False, "logit_bias": {}, "top_logprobs": 0,
           "response_format": {"type": "text"}}
KNOWN = ("model", "messages", "tools", "tool_choice", "temperature", "top_p", "max_tokens", "max_completion_tokens",
         "stop", "seed", "n", "stream", "stream_options", "functions", "function_call", *IGNORED, *NEUTRAL)
MAX_N = 16


class RequestError(Exception):
    """A request the server refuses: an HTTP status and OpenAI's error fields."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None,
                 type: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error JSON (what the ``openai`` client reads into ``APIStatusError``)."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """A checked chat-completions request. ``tool_choice``: ``auto``, ``none``, ``required`` or a
    function name; ``max_tokens`` None means the server's default (capped by the context)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    tool_choice: str = "auto"
    forced_name: str | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    stream: bool = False
    include_usage: bool = False


def _number(body: dict, key: str, lo: float, hi: float, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not lo <= value <= hi:
        raise RequestError(f"{key} must be a number in [{lo}, {hi}], got {value!r}", param=key)
    return float(value)


def _integer(body: dict, key: str, lo: int, hi: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise RequestError(f"{key} must be an integer {bound}, got {value!r}", param=key)
    return value


def _text_content(content: Any, field: str) -> Any:
    """Content given as a list of parts becomes its text; other part types are refused."""
    if not isinstance(content, list):
        return content
    texts = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise RequestError(f"{field}[{i}]: only text content parts are supported", param=field)
        texts.append(part["text"])
    return "".join(texts)


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise RequestError("messages must be a non-empty list of chat messages", param="messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise RequestError(f"messages[{i}] must be an object", param=f"messages[{i}]")
        m = {k: v for k, v in m.items() if v is not None or k == "content"}
        if m.get("role") == "developer":
            m["role"] = "system"
        m["content"] = _text_content(m.get("content"), f"messages[{i}].content")
        out.append(m)
    return out


def _tool_choice(value: Any, tools: list[dict[str, Any]]) -> tuple[str, str | None]:
    names = [t.get("function", {}).get("name") for t in tools if isinstance(t, dict)]
    if value is None:
        return ("auto" if tools else "none"), None
    if value in ("auto", "none", "required"):
        if value == "required" and not tools:
            raise RequestError("tool_choice 'required' needs tools", param="tool_choice")
        return value, None
    if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("function"), dict):
        name = value["function"].get("name")
        if name not in names:
            raise RequestError(f"tool_choice names function {name!r}, which is not among the tools", param="tool_choice")
        return "function", name
    raise RequestError("tool_choice must be 'auto', 'none', 'required' or {\"type\": \"function\", \"function\": "
                       "{\"name\": ...}}", param="tool_choice")


def parse_chat_request(body: Any, served_names: tuple[str, ...]) -> ChatRequest:
    """Check a decoded request body; raise ``RequestError`` naming what is wrong."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    unknown = sorted(set(body) - set(KNOWN))
    if unknown:
        raise RequestError(f"unsupported parameter(s): {', '.join(unknown)}", param=unknown[0])
    for key, neutral in NEUTRAL.items():
        if body.get(key) not in (None, neutral):
            why = "no constrained decoding" if key == "response_format" else "not implemented"
            raise RequestError(f"{key}={json.dumps(body[key])} is not supported by this server ({why})", param=key)
    if body.get("functions") is not None or body.get("function_call") is not None:
        raise RequestError("the deprecated 'functions' / 'function_call' are not supported; use 'tools'", param="functions")
    if body.get("model") not in served_names:
        raise RequestError(f"model {body.get('model')!r} does not exist; this server serves {', '.join(served_names)}",
                           status=404, param="model", code="model_not_found")
    tools = body.get("tools") or []
    if not isinstance(tools, list) or not all(isinstance(t, dict) and t.get("type", "function") == "function"
                                              for t in tools):
        raise RequestError("tools must be a list of {\"type\": \"function\", \"function\": {...}} objects", param="tools")
    choice, forced = _tool_choice(body.get("tool_choice"), tools)
    stop = body.get("stop")
    stop = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("stop must be a non-empty string or a list of at most 4 of them", param="stop")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise RequestError("stream_options must be an object", param="stream_options")
    max_tokens = _integer(body, "max_completion_tokens", 1)
    max_tokens = _integer(body, "max_tokens", 1) if max_tokens is None else max_tokens
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise RequestError("stream must be a boolean", param="stream")
    return ChatRequest(
        messages=_messages(body.get("messages")), tools=tools, tool_choice="function" if forced else choice,
        forced_name=forced, temperature=_number(body, "temperature", 0.0, 2.0, 1.0),
        top_p=_number(body, "top_p", 1e-6, 1.0, 1.0), max_tokens=max_tokens, stop=stop,
        seed=_integer(body, "seed", -(2**63), 2**63 - 1), n=_integer(body, "n", 1, MAX_N) or 1, stream=stream,
        include_usage=bool(opts.get("include_usage")))


# --------------------------------------------------------------------------- responses
@dataclasses.dataclass(frozen=True)
class Choice:
    """One decoded choice as the client sees it."""

    content: str | None
    tool_calls: list[dict[str, Any]]
    finish_reason: str
    completion_tokens: int


def to_choice(completion: Completion, request: ChatRequest, prefix: str = "", format: Format = "auto") -> Choice:
    """The decoded ``completion`` (after a forced ``prefix``) as a message: its calls parsed with the
    project's parser into ``tool_calls`` when the request has tools and allows calls."""
    text = prefix + completion.text
    if completion.finish_reason == "stop":  # a stop string ended it: OpenAI leaves the string out
        ending = next((s for s in request.stop if text.endswith(s)), "")
        text = text[: len(text) - len(ending)]
    finish = "length" if completion.finish_reason == "length" else "stop"
    result = parse(text, format) if request.tools and request.tool_choice != "none" else None
    if result is None or not result.calls:
        return Choice(text, [], finish, len(completion.token_ids))
    tool_calls = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                   "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
                  for c in result.calls]
    return Choice(result.content or None, tool_calls, "tool_calls" if finish == "stop" else finish,
                  len(completion.token_ids))


def usage(prompt_tokens: int, choices: list[Choice]) -> dict[str, int]:
    completion = sum(c.completion_tokens for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion_body(model: str, choices: list[Choice], prompt_tokens: int, id: str | None = None) -> dict[str, Any]:
    """A non-streamed ``chat.completion``."""
    out = []
    for i, c in enumerate(choices):
        message: dict[str, Any] = {"role": "assistant", "content": c.content}
        if c.tool_calls:
            message["tool_calls"] = c.tool_calls
        out.append({"index": i, "message": message, "finish_reason": c.finish_reason, "logprobs": None})
    return {"id": id or new_id(), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": out, "usage": usage(prompt_tokens, choices), "system_fingerprint": None}


def _chunk(id: str, model: str, created: int, choices: list[dict[str, Any]], **extra) -> dict[str, Any]:
    return {"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices,
            "system_fingerprint": None, **extra}


def role_chunk(id: str, model: str, created: int, index: int) -> dict[str, Any]:
    """The first chunk of choice ``index``: its role."""
    return _chunk(id, model, created, [{"index": index, "delta": {"role": "assistant", "content": ""},
                                        "finish_reason": None, "logprobs": None}])


def content_chunk(id: str, model: str, created: int, index: int, text: str) -> dict[str, Any]:
    return _chunk(id, model, created, [{"index": index, "delta": {"content": text}, "finish_reason": None,
                                        "logprobs": None}])


def stream_chunks(model: str, choices: list[Choice], prompt_tokens: int, include_usage: bool,
                  id: str | None = None, created: int | None = None, sent: list[str] | None = None) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of a finished completion, in the order OpenAI sends them:
    the role, the content, each tool call (its id, type and name, then its arguments), the finish
    reason; with ``include_usage`` a last chunk with no choices and the usage. ``sent``: text already
    streamed per choice (then the role chunks went out before it, and only the rest of the content follows)."""
    id, created = id or new_id(), created or int(time.time())
    chunks = []
    for i, c in enumerate(choices):
        done = sent[i] if sent is not None else ""
        if sent is None:
            chunks.append(role_chunk(id, model, created, i))
        rest = (c.content or "")[len(done):] if (c.content or "").startswith(done) else ""
        if rest:
            chunks.append(content_chunk(id, model, created, i, rest))
        for k, tc in enumerate(c.tool_calls):
            head = {"index": k, "id": tc["id"], "type": "function", "function": {"name": tc["function"]["name"],
                                                                                "arguments": ""}}
            args = {"index": k, "function": {"arguments": tc["function"]["arguments"]}}
            for delta in (head, args):
                chunks.append(_chunk(id, model, created, [{"index": i, "delta": {"tool_calls": [delta]},
                                                           "finish_reason": None, "logprobs": None}]))
        chunks.append(_chunk(id, model, created, [{"index": i, "delta": {}, "finish_reason": c.finish_reason,
                                                   "logprobs": None}]))
    if include_usage:
        chunks.append(_chunk(id, model, created, [], usage=usage(prompt_tokens, choices)))
    return chunks


def sse(obj: dict[str, Any] | str) -> bytes:
    """One server-sent event (``data: <json>``), as the ``openai`` client reads a stream."""
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n".encode()
