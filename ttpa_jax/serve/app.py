"""The HTTP side of the server: a FastAPI app with OpenAI's routes over an ``Engine``.

Routes: ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions`` (JSON, or
server-sent events with ``"stream": true``), ``GET /health``. Every error is OpenAI's JSON
(``{"error": {"message", "type", "param", "code"}}``): 400 for a malformed or unsupported request,
401 without the API key (when one is set), 404 for an unknown model or route, 429 when the queue is
full, 500 for a failure while decoding; the server keeps serving after each.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ttpa_jax.serve.engine import Engine
from ttpa_jax.serve.protocol import (
    RequestError,
    completion_body,
    content_chunk,
    error_body,
    new_id,
    parse_chat_request,
    role_chunk,
    sse,
    stream_chunks,
    to_choice,
)
from ttpa_jax.tools.calls import Format


def create_app(engine: Engine, *, served_name: str, api_key: str | None = None, tool_format: Format = "auto") -> FastAPI:
    """The app; ``api_key`` (None or empty: none needed) is compared in constant time, never logged."""
    app = FastAPI(title="ttpa-jax", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())
    card = {"id": served_name, "object": "model", "created": created, "owned_by": "ttpa-jax"}

    @app.exception_handler(RequestError)
    async def refused(request: Request, e: RequestError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return JSONResponse(error_body(str(e.detail), "invalid_request_error"), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def failed(request: Request, e: Exception):
        return JSONResponse(error_body(f"the server failed: {type(e).__name__}: {e}", "server_error"), status_code=500)

    @app.middleware("http")
    async def authorize(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1/"):
            sent = request.headers.get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {api_key}".encode()):
                return JSONResponse(error_body("invalid or missing API key (send Authorization: Bearer KEY)",
                                               "invalid_request_error", code="invalid_api_key"), status_code=401)
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != served_name:
            raise RequestError(f"model {model_id!r} does not exist", status=404, param="model", code="model_not_found")
        return card

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(f"the request body is not valid JSON ({e})") from None
        req = parse_chat_request(body, (served_name,))
        job = await run_in_threadpool(engine.prepare, req)  # chat template + tokenizer, off the event loop
        if not req.stream:
            completions = await asyncio.wrap_future(engine.submit(job))
            choices = [to_choice(c, req, job.prefix, tool_format) for c in completions]
            return JSONResponse(completion_body(served_name, choices, len(job.ids)))
        loop, deltas = asyncio.get_running_loop(), asyncio.Queue()
        job.notify = lambda index, text: loop.call_soon_threadsafe(deltas.put_nowait, (index, text))
        future = asyncio.wrap_future(engine.submit(job))  # its result is scheduled after every delta

        async def events() -> AsyncIterator[bytes]:
            id, created = new_id(), int(time.time())
            for i in range(req.n):
                yield sse(role_chunk(id, served_name, created, i))
            while not future.done() or not deltas.empty():
                get = asyncio.ensure_future(deltas.get())
                await asyncio.wait({get, future}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    continue
                yield sse(content_chunk(id, served_name, created, *get.result()))
            try:
                choices = [to_choice(c, req, job.prefix, tool_format) for c in future.result()]
            except Exception as e:  # the status line is sent: the error goes in the stream, as OpenAI's does
                yield sse(error_body(str(e), "server_error"))
                return
            for chunk in stream_chunks(served_name, choices, len(job.ids), req.include_usage, id, created, job.sent):
                yield sse(chunk)
            yield sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app
