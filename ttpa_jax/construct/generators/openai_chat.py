"""The generator for any OpenAI-compatible chat endpoint (OpenAI, vLLM, SGLang, llama.cpp, ...).

It uses the ``openai`` client's async API with its own retry loop, so every retry is counted:
timeouts, connection errors, 429 and 5xx are retried with exponential backoff and jitter. Replies
are asked for as JSON through ``response_format`` (``json_schema``, else ``json_object``, else plain
instructions: the first the server accepts). A reply that is not the JSON asked for is re-asked with
the reason, then the step fails and the attempt is counted as a failure.

The API key is read from the ``OPENAI_API_KEY`` environment variable only. It is never written to a
record, a log or an error message (errors are scrubbed of it).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from ttpa_jax.construct.generators.openai_prompts import REPLY_SCHEMAS, build_messages
from ttpa_jax.construct.generators.protocol import EndpointError, Episode, GenerationFailure, GenerationStats, ToolCall
from ttpa_jax.tools.library import Tool, argument_errors

FormatMode = Literal["json_schema", "json_object", "none"]
FALLBACK: dict[str, FormatMode] = {"json_schema": "json_object", "json_object": "none"}
FENCE_RE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S)


class Malformed(Exception):
    """A reply that is not what the step asked for; the message is sent back with the re-ask."""


# Before the endpoint has answered once, this many refused connections stop the run (EndpointError).
REFUSALS_BEFORE_FIRST_REPLY = 3


@dataclass(frozen=True)
class OpenAISettings:
    """The `openai` generator: an OpenAI-compatible endpoint (key from the OPENAI_API_KEY environment variable)."""

    base_url: str | None = None
    """openai: the endpoint, e.g. http://localhost:8000/v1 (default: the client's own, or the
    OPENAI_BASE_URL environment variable)."""
    model: str = "gpt-4o-mini"
    """openai: the model name sent to the endpoint."""
    temperature: float = 0.8
    """openai: sampling temperature."""
    max_tokens: int = 1024
    """openai: most tokens per reply."""
    request_timeout: float = 120.0
    """openai: seconds before a request is abandoned (and retried)."""
    max_retries: int = 6
    """openai: retries of one request after a timeout, a connection error, 429 or 5xx. Until the
    endpoint has answered once, a few refused connections stop the run instead, naming the URL."""
    retry_base_delay: float = 1.0
    """openai: first backoff delay in seconds; doubles with each retry (with jitter)."""
    retry_max_delay: float = 60.0
    """openai: longest backoff delay in seconds."""
    max_malformed: int = 2
    """openai: re-asks after a reply that is not the JSON asked for, before the step fails."""
    structured_output: Literal["auto", "json_schema", "json_object", "none"] = "auto"
    """openai: `auto` tries response_format json_schema, then json_object, then plain prompting,
    falling back when the server refuses one."""


def public_url(url: str | None) -> str | None:
    """The URL without user info, query or fragment (safe to record)."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def extract_json(text: str) -> Any:
    """Decode a reply: plain JSON, or JSON inside a fenced code block."""
    m = FENCE_RE.match(text)
    try:
        return json.loads(m.group(1) if m else text)
    except json.JSONDecodeError as e:
        raise Malformed(f"the reply is not valid JSON ({e.msg})") from None


def json_object_text(value: Any, what: str) -> dict[str, Any]:
    """A JSON object given as text (or, leniently, as an object)."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as e:
            raise Malformed(f"{what} is not valid JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise Malformed(f"{what} must be a JSON object")
    return value


class OpenAIGenerator:
    """Writes each construction step with a chat model behind an OpenAI-compatible API."""

    def __init__(self, settings: OpenAISettings, tools: list[Tool], concurrency: int = 8):
        import openai  # the client loads only when the openai generator is used

        self._key = os.environ.get("OPENAI_API_KEY", "")
        if not self._key:
            raise ValueError("the openai generator needs an API key in the OPENAI_API_KEY environment variable "
                             "(for a local server that checks none, set it to any value, e.g. OPENAI_API_KEY=none)")
        self.settings = settings
        self.stats = GenerationStats()
        self._openai = openai
        self._client = openai.AsyncOpenAI(api_key=self._key, base_url=settings.base_url,
                                          timeout=settings.request_timeout, max_retries=0)
        initial = "json_schema" if settings.structured_output == "auto" else settings.structured_output
        self._format: FormatMode = initial
        self._slots = asyncio.Semaphore(concurrency)
        self._answered = False  # has any request got a reply (even an error status)?
        self._refused = 0  # connections refused before the first reply
        self._jitter = random.Random()
        self._tools = {t.name: t for t in tools}

    def describe(self) -> dict[str, Any]:
        return {"generator": "openai", "model": self.settings.model, "base_url": public_url(self.settings.base_url)}

    async def aclose(self) -> None:
        await self._client.close()

    def redact(self, text: str) -> str:
        return text.replace(self._key, "***") if len(self._key) >= 4 else text

    # ------------------------------------------------------------ transport

    def _response_format(self, step: str, mode: FormatMode) -> dict[str, Any] | None:
        if mode == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": step, "schema": REPLY_SCHEMAS[step], "strict": True}}
        if mode == "json_object":
            return {"type": "json_object"}
        return None

    def _fall_back(self, used: FormatMode) -> bool:
        """Use a weaker response format after the server refused ``used``; False when none is left."""
        if self.settings.structured_output != "auto" or used not in FALLBACK:
            return False
        if self._format == used:
            self._format = FALLBACK[used]
            self.stats.structured_output_fallbacks += 1
        return True

    def _check_reachable(self, error: Exception) -> None:
        """Stop the run (``EndpointError`` naming the URL) when the endpoint has refused every connection
        so far: retrying a server that is not there would only spend the whole backoff schedule."""
        if self._answered:
            return
        self._refused += 1
        if self._refused >= REFUSALS_BEFORE_FIRST_REPLY:
            url = public_url(self.settings.base_url or str(self._client.base_url))
            raise EndpointError(f"{url}: cannot connect ({self._refused} connections refused, none answered: "
                                f"{self.redact(str(error))}); is the server running? check --base-url")

    async def _backoff(self, attempt: int, reason: str, error: Exception) -> None:
        if attempt >= self.settings.max_retries:
            raise GenerationFailure(reason, self.redact(str(error)))
        self.stats.retries += 1
        delay = min(self.settings.retry_max_delay, self.settings.retry_base_delay * 2 ** attempt)
        await asyncio.sleep(delay * (0.5 + self._jitter.random()))

    async def complete(self, step: str, messages: list[dict[str, str]]) -> str:
        """One reply's text, retrying transient errors and falling back on response formats."""
        oa = self._openai
        attempt = 0
        while True:
            mode = self._format
            kwargs: dict[str, Any] = {"model": self.settings.model, "messages": messages,
                                      "temperature": self.settings.temperature, "max_tokens": self.settings.max_tokens}
            response_format = self._response_format(step, mode)
            if response_format is not None:
                kwargs["response_format"] = response_format
            self.stats.requests += 1
            try:
                async with self._slots:
                    try:
                        response = await self._client.chat.completions.create(**kwargs)
                    except oa.APIStatusError:
                        self._answered = True  # the server is there; the status is handled below
                        raise
            except (oa.BadRequestError, oa.UnprocessableEntityError) as e:
                if response_format is not None and self._fall_back(mode):
                    continue
                raise GenerationFailure("bad_request", self.redact(str(e))) from None
            except (oa.AuthenticationError, oa.PermissionDeniedError, oa.NotFoundError) as e:
                raise EndpointError(f"the endpoint refused the request ({self.redact(str(e))}); check "
                                    "OPENAI_API_KEY, --base-url and --model") from None
            except oa.RateLimitError as e:
                await self._backoff(attempt, "rate_limited", e)
            except oa.APITimeoutError as e:
                await self._backoff(attempt, "timeout", e)
            except oa.APIConnectionError as e:
                self._check_reachable(e)
                await self._backoff(attempt, "connection_error", e)
            except oa.APIStatusError as e:
                if e.status_code < 500:
                    raise GenerationFailure(f"http_{e.status_code}", self.redact(str(e))) from None
                await self._backoff(attempt, "server_error", e)
            except (oa.APIResponseValidationError, ValueError) as e:  # a body that is not JSON
                await self._backoff(attempt, "bad_response", e)
            else:
                self._answered = True
                usage = getattr(response, "usage", None)
                if usage is not None and usage.prompt_tokens is not None:
                    self.stats.tokens_reported = True
                    self.stats.prompt_tokens += usage.prompt_tokens or 0
                    self.stats.completion_tokens += usage.completion_tokens or 0
                if not response.choices:
                    return ""
                return response.choices[0].message.content or ""
            attempt += 1

    async def ask(self, step: str, ep: Episode, parse, **extra: Any) -> Any:
        """Ask for one step; re-ask with the reason after a malformed reply."""
        messages = build_messages(step, ep, **extra)
        schema_step = "query" if step == "forward_query" else step
        for attempt in range(self.settings.max_malformed + 1):
            text = await self.complete(schema_step, messages)
            try:
                reply = extract_json(text)
                if not isinstance(reply, dict):
                    raise Malformed("the reply must be a JSON object")
                missing = [k for k in REPLY_SCHEMAS[schema_step]["required"] if k not in reply]
                if missing:
                    raise Malformed(f"the reply lacks {', '.join(missing)}")
                return parse(reply)
            except Malformed as e:
                self.stats.malformed += 1
                if attempt == self.settings.max_malformed:
                    raise GenerationFailure("malformed_reply", f"{step}: {e}") from None
                messages = messages + [{"role": "assistant", "content": text},
                                       {"role": "user", "content": f"That reply cannot be used: {e}. "
                                                                   "Reply again with only the JSON object."}]

    # ------------------------------------------------------------ the steps

    @staticmethod
    def _text(reply: dict[str, Any], key: str) -> str:
        value = reply.get(key)
        if not isinstance(value, str) or not value.strip():
            raise Malformed(f"\"{key}\" must be a non-empty string")
        return value.strip()

    async def write_scenario(self, ep: Episode) -> str:
        return await self.ask("scenario", ep, lambda r: self._text(r, "scenario"))

    async def choose_tools(self, ep: Episode) -> list[str]:
        def parse(reply: dict[str, Any]) -> list[str]:
            names = reply.get("tools")
            if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
                raise Malformed("\"tools\" must be a non-empty list of tool names")
            unknown = [n for n in names if ep.tool(n) is None]
            if unknown:
                raise Malformed(f"not among the tools: {', '.join(unknown)}")
            return list(dict.fromkeys(names))

        return await self.ask("tools", ep, parse)

    async def next_call(self, ep: Episode) -> ToolCall | None:
        def parse(reply: dict[str, Any]) -> ToolCall | None:
            if reply.get("action") == "finish":
                return None
            if reply.get("action") != "call":
                raise Malformed("\"action\" must be \"call\" or \"finish\"")
            tool = ep.tool(str(reply.get("name")))
            if tool is None:
                raise Malformed(f"{reply.get('name')!r} is not among the tools")
            arguments = json_object_text(reply.get("arguments"), "\"arguments\"")
            errors = argument_errors(tool, arguments)
            if errors:
                raise Malformed(f"the arguments do not fit the {tool.name} schema: {'; '.join(errors)}")
            return ToolCall(name=tool.name, arguments=arguments)

        return await self.ask("call", ep, parse)

    async def play_tool(self, ep: Episode, call: ToolCall) -> dict[str, Any]:
        tool = ep.tool(call.name)
        return await self.ask("tool_result", ep, lambda r: json_object_text(r.get("result"), "\"result\""),
                              tool=tool, arguments=call.arguments)

    async def write_answer(self, ep: Episode) -> str:
        return await self.ask("answer", ep, lambda r: self._text(r, "answer"))

    async def write_query(self, ep: Episode) -> str:
        step = "query" if ep.mode == "reversed" else "forward_query"
        return await self.ask(step, ep, lambda r: self._text(r, "query"))
