"""A scripted OpenAI-compatible chat server for tests (stdlib ``http.server`` in a thread).

It plays a generator model for the construction prompts of ``ttpa_jax.construct.generators.openai_prompts``
and misbehaves on a fixed schedule: it refuses ``response_format`` json_schema, and by request
number returns 500, 429, content that is not JSON, a body that is not JSON, or replies too slowly.
With ``refuse_key`` it answers 401 to everything.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ttpa_jax.construct.checks import leaves, salient_items
from ttpa_jax.construct.generators.openai_prompts import CONTEXT_MARKER
from ttpa_jax.construct.generators.values import sample_object

# Request number modulo PERIOD -> misbehaviour.
PERIOD = 10
SCHEDULE = {2: "server_error", 4: "rate_limit", 6: "malformed_content", 8: "slow"}
BAD_BODY_EVERY = 23


def _fake_reply(step: str, context: dict[str, Any], instructions: str, n: int) -> dict[str, Any]:
    """What a cooperative generator model would answer."""
    if step == "scenario":
        return {"scenario": "Ana is planning her week and has several errands to sort out."}
    if step == "tools":
        return {"tools": sorted(t["function"]["name"] for t in context["tools"])[:2]}
    if step == "call":
        left = int(re.search(r"\((\d+) call\(s\) planned are left\)", instructions).group(1))
        if left <= 0:
            return {"action": "finish", "name": "", "arguments": "{}"}
        done = context["calls_so_far"]
        tool = context["tools"][len(done) % len(context["tools"])]["function"]
        args = sample_object(tool["parameters"], random.Random(n), 0.5)
        return {"action": "call", "name": tool["name"], "arguments": json.dumps(args)}
    if step == "tool_result":
        return {"result": json.dumps({"status": "ok", "reference": f"R-{1000 + n}", "price": round(5 + n * 0.25, 2)})}
    if step == "answer":
        values = [v for c in context["calls"] for _, v in salient_items(c["result"], c["arguments"])]
        return {"answer": "Here is what I found: " + ", ".join(map(str, values)) + "." if values else "Done."}
    if step in ("query", "forward_query"):
        values = [v for c in context.get("calls", []) for v in leaves(c["arguments"]) if not isinstance(v, bool)]
        return {"query": "Please help me with " + "; ".join(map(str, values)) + "."}
    raise ValueError(step)


class StubState:
    def __init__(self, slow_seconds: float, refuse_key: bool):
        self.lock = threading.Lock()
        self.refuse_key = refuse_key
        self.steps: list[str] = []
        self.requests = 0
        self.slow_seconds = slow_seconds
        self.events: Counter = Counter()
        self.auth_headers: set[str] = set()
        self.response_formats: Counter = Counter()


def _handler(state: StubState):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def _send(self, status: int, body: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout)

        def _error(self, status: int, message: str) -> None:
            self._send(status, json.dumps({"error": {"message": message, "type": "error"}}).encode())

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fmt = (body.get("response_format") or {}).get("type", "none")
            with state.lock:
                state.auth_headers.add(self.headers.get("Authorization", ""))
                state.response_formats[fmt] += 1
                if fmt == "json_schema":
                    state.events["refused_json_schema"] += 1
                    refuse, n = True, 0
                else:
                    state.requests += 1
                    refuse, n = False, state.requests
                    event = "bad_body" if n % BAD_BODY_EVERY == 0 else SCHEDULE.get(n % PERIOD, "ok")
                    state.events[event] += 1
            if state.refuse_key:
                return self._error(401, "Incorrect API key provided")
            if refuse:
                return self._error(400, "response_format of type json_schema is not supported by this server")
            if event == "server_error":
                return self._error(500, "internal error")
            if event == "rate_limit":
                return self._error(429, "rate limit reached")
            if event == "bad_body":
                return self._send(200, b"<html>gateway hiccup</html>")
            if event == "slow":
                time.sleep(state.slow_seconds)
            user = body["messages"][1]["content"]
            step = re.match(r"# Step: (\w+)", user).group(1)
            with state.lock:
                state.steps.append(step)
            instructions, context = user.split(CONTEXT_MARKER, 1)
            content = ("{\"oops\": " if event == "malformed_content"
                       else json.dumps(_fake_reply(step, json.loads(context), instructions, n)))
            reply = {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": content}}],
                     "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}
            self._send(200, json.dumps(reply).encode())

    return Handler


class StubServer:
    """``with StubServer() as s: ... s.base_url ...``"""

    def __init__(self, slow_seconds: float = 0.6, refuse_key: bool = False):
        self.state = StubState(slow_seconds, refuse_key)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/v1"

    def __enter__(self) -> StubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
