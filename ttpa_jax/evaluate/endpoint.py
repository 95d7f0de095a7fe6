"""Predictions from any OpenAI-compatible chat endpoint: ``evaluate --endpoint URL`` (ours,
``python -m ttpa_jax.serve``, or vLLM, llama.cpp's server, OpenAI ...).

Each prompt is sent as a chat completion with its tools, greedily (``temperature`` 0); the
prediction is what a client receives: the answer's ``tool_calls`` as ``{"name", "arguments"}`` calls
when it has any, else its text, which the metrics parse as they parse our decoder's output. Requests
run ``concurrency`` at a time. The key is read from ``OPENAI_API_KEY`` (a server that checks none
takes any); it is never printed. An endpoint that cannot be reached, refuses the key or does not
know the model stops the run with one message (``EndpointError``); a request refused as malformed or
too long (400) counts as an empty prediction and is reported.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ttpa_jax.construct.generators.openai_chat import public_url
from ttpa_jax.construct.generators.protocol import EndpointError


def prediction_of(message: Any) -> str | list[dict[str, Any]]:
    """An ``openai`` ``ChatCompletionMessage`` as a prediction: its calls, else its text."""
    calls = [{"name": tc.function.name, "arguments": tc.function.arguments} for tc in message.tool_calls or []]
    return calls or (message.content or "")


def endpoint_predictions(prompts: Sequence[tuple[list[dict], list[dict]]], url: str, model: str | None = None,
                         max_tokens: int = 512, concurrency: int = 8, progress: bool = False) -> list[str | list]:
    """One prediction per ``(messages, tools)`` prompt, in order. ``model``: the name sent (default:
    the first the endpoint lists)."""
    import openai  # deferred: the client loads only when an endpoint is evaluated
    from tqdm.auto import tqdm

    client = openai.OpenAI(base_url=url, api_key=os.environ.get("OPENAI_API_KEY") or "none", max_retries=3,
                           timeout=600.0)
    where = public_url(url)
    try:
        model = model or client.models.list().data[0].id
    except (openai.APIConnectionError, openai.APIStatusError, IndexError) as e:
        raise EndpointError(f"{where}: cannot list its models ({type(e).__name__}: {e}); is the server running? "
                            "check --endpoint (and OPENAI_API_KEY)") from None
    refused: list[str] = []

    def one(prompt):
        messages, tools = prompt
        kwargs = {"tools": tools} if tools else {}
        try:
            r = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=max_tokens,
                                               **kwargs)
        except openai.BadRequestError as e:
            refused.append(str(e))
            return ""
        except (openai.APIConnectionError, openai.AuthenticationError, openai.NotFoundError,
                openai.PermissionDeniedError) as e:
            raise EndpointError(f"{where}: {type(e).__name__}: {e}") from None
        return prediction_of(r.choices[0].message)

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        out = list(tqdm(pool.map(one, prompts), total=len(prompts), desc=f"evaluate {model}", unit="prompt",
                        disable=not progress))
    if refused:
        print(f"{where}: {len(refused)} requests refused as bad requests, scored as empty predictions "
              f"(first: {refused[0]})", file=sys.stderr)
    return out
