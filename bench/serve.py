"""Serving benchmark: completion tokens per second of ``python -m ttpa_jax.serve`` with 1 and with 8
concurrent clients (the real ``openai`` client over HTTP on 127.0.0.1), against the same prompts
through ``generate`` (``decode.generate.complete``, batch 8, no HTTP).

Eight tool-calling prompts (the chat template's tool block and a different question each, one prompt
bucket), greedy, ``--max-tokens`` new tokens, stopping at EOS. One client sends the eight requests one
after another; eight clients send one each at the same moment (the engine batches them). Each side
runs once untimed (compiling its shapes), then ``--runs`` rounds that call every side once
(``ttpa_bench.report.alternating_times``); tokens are what each side generated
(``usage.completion_tokens`` for the server). Prints the machine, tokens/s (medians) and the ratios,
with their range over the rounds: 8 clients over 1 client (batching's gain; at least 3x is the aim)
and 8 clients over ``generate`` (what HTTP, queueing and segmented decoding cost).

    python bench/serve.py                       # SmolLM2-135M-Instruct, about 2-3 minutes on 2 quiet cores
    python bench/serve.py --model DIR|FILE.gguf --max-tokens 64 --runs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from ttpa_jax.cpu import tune  # noqa: E402

tune()  # as every ttpa_jax command does, before jax starts its threads

import openai  # noqa: E402

from ttpa_bench import report  # noqa: E402
from ttpa_jax.core.cache import use_compile_cache  # noqa: E402
from ttpa_jax.decode.generate import complete  # noqa: E402
from ttpa_jax.serve.app import create_app  # noqa: E402
from ttpa_jax.serve.server import Server, load_engine  # noqa: E402
from ttpa_jax.serve.settings import ServeArgs  # noqa: E402

TOOLS = [{"type": "function", "function": {"name": name, "description": desc, "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
    "required": ["city"]}}} for name, desc in (("get_weather", "Current weather in a city"),
                                                ("get_time", "Local time in a city"),
                                                ("get_population", "Population of a city"))]
QUESTIONS = ["What is the weather in Paris right now, in C?", "What time is it in Tokyo?",
             "How many people live in Lima?", "Is it raining in Oslo? Answer in F.",
             "Tell me the local time in Nairobi.", "What's the population of Kyiv?",
             "Weather in Buenos Aires please, Celsius.", "Current time in Reykjavik?"]


def server_round(client, name: str, clients: int, max_tokens: int) -> int:
    """Completion tokens of the eight questions: ``clients`` threads, each sending its share one after
    another, all starting together."""
    shares = [QUESTIONS[i::clients] for i in range(clients)]
    tokens = [0] * clients
    start = threading.Barrier(clients + 1)

    def run(k):
        start.wait()
        for q in shares[k]:
            r = client.chat.completions.create(model=name, messages=[{"role": "user", "content": q}], tools=TOOLS,
                                               temperature=0, max_tokens=max_tokens)
            tokens[k] += r.usage.completion_tokens

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    for t in threads:
        t.join()
    return sum(tokens)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="base model name, FILE.gguf or HF directory")
    p.add_argument("--max-tokens", type=int, default=48, help="new tokens per request (greedy, EOS stops)")
    p.add_argument("--runs", type=int, default=2, help="timed rounds, after one untimed")
    p.add_argument("--batch-wait-ms", type=float, default=20.0, help="the server's --batch-wait-ms")
    a = p.parse_args()
    use_compile_cache()
    print(report.machine_line())
    engine, name = load_engine(ServeArgs(model=a.model, batch_size=8, batch_wait_ms=a.batch_wait_ms))
    server = Server(create_app(engine, served_name=name)).start()
    engine.start()
    client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=3600)
    prompts = [engine.prepare(engine_request(name, q)).ids for q in QUESTIONS]
    print(f"{a.model}: 8 prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens, "
          f"{a.max_tokens} new tokens at most, greedy, EOS stops")
    sides = {"generate, batch 8": lambda: generate_round(engine, prompts, a.max_tokens),
             "serve, 1 client": lambda: server_round(client, name, 1, a.max_tokens),
             "serve, 8 clients": lambda: server_round(client, name, 8, a.max_tokens)}
    tokens = {}

    def timed(label):
        def fn():
            t = time.perf_counter()
            tokens.setdefault(label, []).append(sides[label]())
            n, dt = tokens[label][-1], time.perf_counter() - t
            print(f"    {'warm-up' if len(tokens[label]) == 1 else 'round'} {label}: {n} tokens in {dt:.1f} s",
                  flush=True)
        return fn

    try:
        times = report.alternating_times([timed(k) for k in sides], a.runs)
    finally:
        server.stop()
        engine.stop()
    rate_rounds = {k: [n / t for n, t in zip(tokens[k][1:], ts)] for k, ts in zip(sides, times)}  # untimed call left out
    rates = {k: statistics.median(r) for k, r in rate_rounds.items()}
    for k, ts in zip(sides, times):
        report.value(k, rates[k], "tok/s", f"{tokens[k][-1]} tokens in {statistics.median(ts):.2f} s")

    def compare(label, num, den):
        per_round = [a / b for a, b in zip(rate_rounds[num], rate_rounds[den])]
        report.ratio(label, rates[num] / rates[den], (min(per_round), max(per_round)))

    compare("8 clients / 1 client", "serve, 8 clients", "serve, 1 client")
    compare("8 clients / generate", "serve, 8 clients", "generate, batch 8")


def engine_request(name: str, question: str):
    from ttpa_jax.serve.protocol import parse_chat_request

    body = {"model": name, "messages": [{"role": "user", "content": question}], "tools": TOOLS, "temperature": 0}
    return parse_chat_request(body, (name,))


def generate_round(engine, prompts, max_tokens: int) -> int:
    """Completion tokens of the eight prompts decoded by ``generate``'s path, batch 8."""
    done = complete(engine.model, engine.tokenizer, prompts, max_new_tokens=max_tokens, batch_size=8,
                    eos_ids=engine.eos_ids)
    return sum(len(c.token_ids) for c in done)


if __name__ == "__main__":
    main()
