"""The openai generator against a scripted OpenAI-compatible server, through the real client."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from construct_configs import construct_config
from openai_stub_server import StubServer

from ttpa_jax.construct.build import construct
from ttpa_jax.construct.checks import check_record
from ttpa_jax.construct.generators.openai_chat import extract_json, public_url
from ttpa_jax.construct.generators.protocol import EndpointError
from ttpa_jax.core.jsonl import read_jsonl
from ttpa_jax.tools.library import bundled_tools

SECRET = "sk-test-SECRET-4242"
USER_TOOLS = [
    {"type": "function", "function": {
        "name": "find_train", "description": "Find trains between two stations.",
        "parameters": {"type": "object", "properties": {
            "origin": {"type": "string"}, "destination": {"type": "string"},
            "travel_day": {"type": "string", "format": "date"},
            "seats": {"type": "integer", "minimum": 1, "maximum": 4}},
            "required": ["origin", "destination", "travel_day"]}}},
    {"type": "function", "function": {
        "name": "order_pizza", "description": "Order a pizza.",
        "parameters": {"type": "object", "properties": {
            "size": {"type": "string", "enum": ["small", "medium", "large"]},
            "toppings": {"type": "array", "items": {"type": "string", "enum": ["olives", "ham", "basil"]}},
            "extra_cheese": {"type": "boolean"}},
            "required": ["size"]}}},
    {"type": "function", "function": {
        "name": "estimate_paint", "description": "Litres of paint for a wall.",
        "parameters": {"type": "object", "properties": {
            "area": {"type": "number", "minimum": 1, "maximum": 300},
            "coats": {"type": "integer", "minimum": 1, "maximum": 3}},
            "required": ["area"]}}},
]


@pytest.fixture
def tools_file(tmp_path):
    """Three tools the model must play, plus two bundled tools that have executors."""
    bundled = [t.schema for t in bundled_tools() if t.name in ("get_current_weather", "calculate_bmi")]
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(USER_TOOLS + bundled))
    return path


def _config(tmp_path, tools_file, base_url, **kw):
    return construct_config(tmp_path / "sft.jsonl", tools=str(tools_file), generator="openai", num=kw.pop("num", 12),
                           seed=3, base_url=base_url, model="stub-model", concurrency=4, request_timeout=0.4,
                           retry_base_delay=0.01, retry_max_delay=0.05, min_calls=2, max_calls=3,
                           min_candidates=3, max_candidates=4, progress=False, **kw)


def test_openai_generator_survives_a_misbehaving_server(tmp_path, tools_file, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with StubServer(slow_seconds=1.0) as server:
        summary = construct(_config(tmp_path, tools_file, server.base_url))
        events = server.state.events
        formats = server.state.response_formats
        auth = server.state.auth_headers

    records = read_jsonl(tmp_path / "sft.jsonl")
    assert summary.made == len(records) == 12
    assert len({r["id"] for r in records}) == 12
    for r in records:
        assert check_record(r, 2, 3) == []
        assert r["meta"]["generator"] == "openai" and r["meta"]["model"] == "stub-model"
    # Tools without an executor were played by the model; bundled ones ran their executor.
    played = {name for r in records for name in r["meta"]["played_by_generator"]}
    assert played and played <= {"find_train", "order_pizza", "estimate_paint"}

    # Every kind of misbehaviour happened and was counted.
    assert events["refused_json_schema"] >= 1 and formats["json_object"] > 0
    assert summary.stats.structured_output_fallbacks == 1
    assert min(events["server_error"], events["rate_limit"], events["slow"], events["bad_body"]) >= 1
    # Each transport failure was retried, or (retries used up) failed its attempt and was counted.
    transport = ("server_error", "rate_limited", "bad_response", "timeout", "connection_error")
    assert summary.stats.retries + sum(summary.failures[r] for r in transport) >= \
        events["server_error"] + events["rate_limit"] + events["bad_body"] + events["slow"]
    assert summary.stats.malformed >= events["malformed_content"] >= 1
    assert summary.stats.tokens_reported and summary.stats.prompt_tokens >= 100 * summary.stats.requests // 2

    # The key went to the server and nowhere else.
    assert auth == {f"Bearer {SECRET}"}
    out = capsys.readouterr()
    assert SECRET not in (tmp_path / "sft.jsonl").read_text() + out.out + out.err
    assert SECRET not in json.dumps(summary.to_dict())


def test_failures_are_counted_when_the_server_never_answers_well(tmp_path, tools_file, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with StubServer(slow_seconds=1.0) as server:
        # No retries, no re-asks: any misbehaviour fails the attempt; attempts are retried.
        summary = construct(_config(tmp_path, tools_file, server.base_url, num=4, max_retries=0,
                                    max_malformed=0, max_attempts=6))
    assert sum(summary.failures.values()) >= 1
    assert set(summary.failures) <= {"server_error", "rate_limited", "timeout", "bad_response", "malformed_reply"}
    assert summary.made + summary.given_up == 4
    assert summary.attempts == summary.made + summary.rejected_instances + sum(summary.failures.values())


def test_forward_mode_writes_the_query_first_and_its_defects_are_counted(tmp_path, tools_file, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with StubServer(slow_seconds=1.0) as server:
        # The stub's forward queries state no values, so the calls' facts are not in the query.
        summary = construct(_config(tmp_path, tools_file, server.base_url, num=3, mode="forward", max_attempts=1))
        steps = list(server.state.steps)
    assert "scenario" not in steps and "query" not in steps
    assert steps.index("forward_query") < steps.index("tools") < steps.index("call")
    assert summary.made == 0 and summary.given_up == 3
    assert summary.rejected["unrecoverable_argument"] == summary.rejected_instances == 3
    assert "not in the query" in summary.examples["unrecoverable_argument"]
    assert "unrecoverable_argument: 3" in summary.format()


def test_a_refused_key_stops_the_run_with_a_clear_message(tmp_path, tools_file, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with StubServer(refuse_key=True) as server:
        with pytest.raises(EndpointError) as e:
            construct(_config(tmp_path, tools_file, server.base_url, num=5))
    assert "OPENAI_API_KEY" in str(e.value) and "401" in str(e.value) and SECRET not in str(e.value)
    assert (tmp_path / "sft.jsonl").read_text() == ""


def test_missing_api_key_is_one_clear_error(tmp_path, tools_file):
    env = {k: v for k, v in __import__("os").environ.items() if k != "OPENAI_API_KEY"}
    proc = subprocess.run([sys.executable, "-m", "ttpa_jax.construct", "--generator", "openai", "--tools",
                           str(tools_file), "--out", str(tmp_path / "x.jsonl"), "--num", "2"],
                          capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "OPENAI_API_KEY" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_reply_helpers():
    assert extract_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('{"a": [1, 2]}') == {"a": [1, 2]}
    assert public_url("https://user:pw@api.example.com:8443/v1?key=abc") == "https://api.example.com:8443/v1"


def test_error_recovery_fails_calls_of_tools_with_executors_only(tmp_path, monkeypatch):
    """The model plays estimate_paint; get_air_quality runs its executor, which refuses a misspelled city."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    tools = [t for t in USER_TOOLS if t["function"]["name"] in ("estimate_paint", "order_pizza")]
    tools += [t.schema for t in bundled_tools() if t.name == "get_air_quality"]
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(tools))
    with StubServer(slow_seconds=0.0) as server:
        summary = construct(_config(tmp_path, path, server.base_url, num=4, error_recovery=1.0))
    records = read_jsonl(tmp_path / "sft.jsonl")
    assert summary.made == len(records) == summary.recovered == 4
    for r in records:
        assert check_record(r, 2, 3) == []
        calls = [m for m in r["messages"] if m.get("tool_calls")]
        [k] = r["meta"]["failed_calls"]
        failed, correction = calls[k]["tool_calls"][0]["function"], calls[k + 1]["tool_calls"][0]["function"]
        assert failed["name"] == correction["name"] == "get_air_quality"
        assert failed["arguments"]["city"] != correction["arguments"]["city"]
        assert "estimate_paint" in r["meta"]["played_by_generator"]


def test_an_endpoint_that_refuses_every_connection_stops_the_run_naming_it(tmp_path, tools_file, monkeypatch):
    import socket
    import time

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with socket.socket() as s:  # a port nothing listens on once this socket is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    t0 = time.perf_counter()
    with pytest.raises(EndpointError) as e:  # default retry settings: 6 retries, 1 s first backoff
        construct(construct_config(tmp_path / "sft.jsonl", tools=str(tools_file), generator="openai", num=20,
                                   base_url=url, concurrency=1, progress=False))
    assert time.perf_counter() - t0 < 15  # every retry of every request would take minutes
    assert str(e.value).startswith(f"{url}: cannot connect") and SECRET not in str(e.value)
    assert (tmp_path / "sft.jsonl").read_text() == ""
