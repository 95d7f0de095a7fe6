"""python -m ttpa_jax.serve through the real `openai` client: a tiny model fine-tuned to emit one tool
call, exported to GGUF, served from that file. Plain, streamed, concurrent, tool_choice, errors, the
API key, `evaluate --endpoint` against it, the command line; the segmented decoder
against `generate`. Servers listen on 127.0.0.1 only and are stopped by their fixtures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest
from helpers import TOOLS, write_jsonl

QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}


def fine_tune_to_call(model_dir, out, steps: int = 100):
    """The tiny model trained (full SFT, Adam) on one conversation: QUESTION answered by CALL."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import ttpa_jax
    from ttpa_jax.text.prompts import load_tokenizer
    from ttpa_jax.text.render import render_conversation

    answer = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": CALL}]}
    r = render_conversation(load_tokenizer(model_dir), QUESTION + [answer], TOOLS)
    ids, w = jnp.asarray(r.ids[None]), jnp.asarray(r.assistant_mask()[None].astype(np.float32))  # [1, T]
    model = ttpa_jax.load_pretrained(model_dir)
    opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        def loss_fn(m):
            logp = jax.nn.log_softmax(m(ids[:, :-1], jnp.ones(ids[:, :-1].shape, bool)))  # [1, T-1, V]
            nll = -jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
            return (nll * w[:, 1:]).sum() / w[:, 1:].sum()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    for _ in range(steps):
        loss = step(model, opt)
    assert float(loss) < 0.1
    return ttpa_jax.save_pretrained(model, out, tokenizer_dir=model_dir)


@pytest.fixture(scope="module")
def tool_gguf(tiny_model_dir, tmp_path_factory):
    """The fine-tuned model exported as GGUF (f32), and a cache of its own for the conversion back."""
    from ttpa_jax.export.exporter import main as export_main

    d = tmp_path_factory.mktemp("serve")
    merged = fine_tune_to_call(tiny_model_dir, d / "merged")
    assert export_main(["--model", str(merged), "--out", str(d / "tool.gguf"), "--format", "gguf",
                        "--gguf-type", "f32"]) == 0
    mp = pytest.MonkeyPatch()
    mp.setenv("TTPA_CACHE", str(d / "cache"))
    yield d / "tool.gguf"
    mp.undo()


@pytest.fixture(scope="module")
def served(tool_gguf):
    """(engine, base URL, model name): the GGUF served in this process on a free port."""
    from ttpa_jax.serve.app import create_app
    from ttpa_jax.serve.server import Server, load_engine
    from ttpa_jax.serve.settings import ServeArgs

    engine, name = load_engine(ServeArgs(model=str(tool_gguf), batch_wait_ms=200, max_queue=16))
    server = Server(create_app(engine, served_name=name)).start()
    engine.start()
    yield engine, server.url, name
    server.stop()
    engine.stop()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[1], api_key="none", max_retries=0)


def ask(client, name, **kw):
    kw = {"temperature": 0, "max_tokens": 48, **kw}
    return client.chat.completions.create(model=name, messages=QUESTION, tools=TOOLS, **kw)


def test_completion_returns_the_fine_tuned_call_as_tool_calls(served, client):
    r = ask(client, served[2])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [tc] = choice.message.tool_calls
    assert tc.type == "function" and tc.function.name == CALL["name"]
    assert json.loads(tc.function.arguments) == CALL["arguments"]
    assert r.usage.prompt_tokens > 100 and 0 < r.usage.completion_tokens <= 48
    assert [m.id for m in client.models.list().data] == [served[2]]


def test_streamed_deltas_assemble_to_the_same_call(served, client):
    chunks = list(ask(client, served[2], stream=True, stream_options={"include_usage": True}))
    calls: dict[int, dict] = {}
    for ch in chunks:
        for c in ch.choices:
            for d in c.delta.tool_calls or []:
                call = calls.setdefault(d.index, {"name": "", "arguments": ""})
                call["name"] += d.function.name or ""
                call["arguments"] += d.function.arguments or ""
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [(CALL["name"], CALL["arguments"])]
    assert [c.finish_reason for ch in chunks for c in ch.choices if c.finish_reason] == ["tool_calls"]
    assert chunks[-1].usage.completion_tokens > 0 and chunks[-1].choices == []


def test_eight_concurrent_requests_all_get_the_call_in_one_batch(served, client):
    engine = served[0]
    before = engine.batches
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: ask(client, served[2]), range(8)))
    assert all(a.choices[0].message.tool_calls[0].function.name == CALL["name"] for a in answers)
    assert engine.batches - before <= 2  # they arrived together (one straggler at most), not eight batches


def test_tool_choice_named_function_and_none(served, client):
    r = ask(client, served[2], tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert r.choices[0].message.tool_calls[0].function.name == "get_time"
    assert r.choices[0].finish_reason == "tool_calls"
    r = ask(client, served[2], tool_choice="none")
    assert r.choices[0].message.tool_calls is None and isinstance(r.choices[0].message.content, str)


def test_streamed_text_equals_the_plain_answer_with_the_same_seed(served, client):
    kw = dict(model=served[2], messages=[{"role": "user", "content": "Hello, who are you?"}], temperature=1.0,
              seed=7, max_tokens=40, n=2)
    plain = client.chat.completions.create(**kw)
    texts = ["", ""]
    for ch in client.chat.completions.create(stream=True, **kw):
        for c in ch.choices:
            texts[c.index] += c.delta.content or ""
    assert texts == [c.message.content for c in plain.choices]


def _raw(url, body: bytes, headers=None):
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json",
                                                                         **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_malformed_requests_get_openai_errors_and_the_server_keeps_serving(served, client):
    _, url, name = served
    status, body = _raw(url + "/chat/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=name, messages=[])
    assert e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.chat.completions.create(model=name, messages=QUESTION, logprobs=True)
    with pytest.raises(openai.BadRequestError, match="tool_choice"):
        ask(client, name, tool_choice={"type": "function", "function": {"name": "no_such_tool"}})
    with pytest.raises(openai.BadRequestError, match="context") as e:
        ask(client, name, max_tokens=10**6)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    status, body = _raw(url + "/completions", b"{}")
    assert status == 404 and "error" in body
    assert ask(client, name).choices[0].message.tool_calls[0].function.name == CALL["name"]


def test_api_key_is_required_when_set(served):
    from ttpa_jax.serve.app import create_app
    from ttpa_jax.serve.server import Server

    engine, _, name = served
    server = Server(create_app(engine, served_name=name, api_key="s3cret-key")).start()
    try:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0).models.list()
        keyed = openai.OpenAI(base_url=server.url, api_key="s3cret-key", max_retries=0)
        assert ask(keyed, name).choices[0].message.tool_calls[0].function.name == CALL["name"]
    finally:
        server.stop()


def test_evaluate_endpoint_scores_what_the_client_receives(served, tmp_path, monkeypatch):
    from ttpa_jax.evaluate.evaluator import main

    answer = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": CALL}]}
    data = write_jsonl(tmp_path / "test.jsonl", [{"id": "a", "messages": QUESTION + [answer], "tools": TOOLS}])
    monkeypatch.setenv("OPENAI_API_KEY", "none")
    assert main(["--data", data, "--endpoint", served[1], "--out", str(tmp_path / "m.json"), "--no-progress",
                 "--max-new-tokens", "48"]) == 0
    m = json.loads((tmp_path / "m.json").read_text())["model"]
    assert m["param_value_accuracy"] == 1.0 and m["format_validity"] == 1.0
    assert m["per_turn"][0]["prediction"] == [{"name": CALL["name"], "arguments": json.dumps(CALL["arguments"])}]


def test_segments_decode_what_one_run_to_the_end_decodes(served):
    """Five steps at a time or all at once, the same tokens (the engine's shapes: no new compile)."""
    import jax

    from ttpa_jax.decode.segments import SegmentedDecode
    from ttpa_jax.serve.engine import new_tokens_bucket
    from ttpa_jax.serve.protocol import parse_chat_request

    engine, _, name = served
    job = engine.prepare(parse_chat_request({"model": name, "messages": QUESTION, "tools": TOOLS, "temperature": 0},
                                            (name,)))
    ids, mask = np.asarray([job.ids]), np.ones((1, len(job.ids)), bool)
    kw = dict(max_new_tokens=new_tokens_bucket(48), eos_ids=engine.eos_ids, key=jax.random.key(0)[None])
    whole = SegmentedDecode(engine.model, ids, mask, **kw)
    tokens, lengths, done = whole.advance(10**6)
    assert whole.finished and done.all()
    seg, steps = SegmentedDecode(engine.model, ids, mask, **kw), 0
    while not seg.finished:
        parts = seg.advance(5)
        steps += 1
    assert steps == -(-int(lengths[0]) // 5)
    np.testing.assert_array_equal(parts[0], tokens)
    np.testing.assert_array_equal(parts[1], lengths)
    text = engine.tokenizer.decode(tokens[0, : lengths[0]], skip_special_tokens=True)
    assert '"name": "get_weather"' in text


def test_cli_serves_with_a_key_from_the_environment_and_never_prints_it(tool_gguf, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MY_SERVE_KEY": "k-0123456789", "TTPA_CACHE": os.environ["TTPA_CACHE"]}
    log = tmp_path / "serve.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "ttpa_jax.serve", "--model", str(tool_gguf), "--port",
                                 str(port), "--api-key-env", "MY_SERVE_KEY", "--served-model-name", "tiny"],
                                stdout=f, stderr=subprocess.STDOUT, env=env)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k-0123456789", max_retries=0)
        deadline = time.monotonic() + 600  # imports and the model load; minutes on a busy 2-core machine
        while True:
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        assert ask(client, "tiny").choices[0].message.tool_calls[0].function.name == CALL["name"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=client.base_url, api_key="nope", max_retries=0).models.list()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert "127.0.0.1" in text and "k-0123456789" not in text


def test_bad_command_lines_exit_2(tmp_path):
    from ttpa_jax.serve.server import main

    with pytest.raises(SystemExit) as e:
        main(["--model", "x", "--batch-size", "0"])
    assert e.value.code == 2
    assert main(["--model", str(tmp_path / "missing.gguf")]) == 2


def test_request_checks_and_the_queue_limit_without_a_model():
    from types import SimpleNamespace

    from ttpa_jax.serve.engine import Engine, Job, sampling_of
    from ttpa_jax.serve.protocol import RequestError, parse_chat_request

    body = {"model": "m", "messages": QUESTION, "tools": TOOLS}
    req = parse_chat_request(body, ("m",))
    assert (req.tool_choice, req.temperature, req.n, req.stop) == ("auto", 1.0, 1, ())
    for bad, param in (({"temperature": 3}, "temperature"), ({"n": 0}, "n"), ({"stop": ["a"] * 5}, "stop"),
                       ({"response_format": {"type": "json_object"}}, "response_format"), ({"foo": 1}, "foo"),
                       ({"tool_choice": "required", "tools": []}, "tool_choice"), ({"stream": "yes"}, "stream"),
                       ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content")):
        with pytest.raises(RequestError) as e:
            parse_chat_request({**body, **bad}, ("m",))
        assert e.value.status == 400 and e.value.param == param, bad
    with pytest.raises(RequestError) as e:
        parse_chat_request({**body, "model": "other"}, ("m",))
    assert e.value.status == 404 and e.value.code == "model_not_found"
    engine = Engine(SimpleNamespace(config=SimpleNamespace(max_position_embeddings=64)), None, eos_ids=(1,),
                    max_queue=1)
    job = lambda: Job([1, 2], "", req, 8, sampling_of(req), 0)  # noqa: E731
    with pytest.raises(RequestError, match="shutting down"):
        engine.submit(job())
    engine._running = True  # accepting requests, no decoding thread
    engine.submit(job())
    with pytest.raises(RequestError) as e:
        engine.submit(job())
    assert e.value.status == 429 and e.value.code == "queue_full"
