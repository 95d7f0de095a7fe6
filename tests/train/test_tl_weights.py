"""TL-Training's token weighting on hand-made conversations: MAE by error content (per call in a
parallel turn), PKT key tokens and weights as in TL-Training's code."""

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from ttpa_jax.core.conversation import failed_calls, is_error_feedback, mae_masked_messages, normalize_record
from ttpa_jax.text.render import Rendered, render_conversation
from ttpa_jax.train.token_weights import divergence_offsets, key_token_mask, make_weight_fn

TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
         for n in ("get_weather", "get_time", "set_alarm")]


def call(name, city):
    return {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": {"city": city}}}]}


def record():
    return normalize_record({"tools": TOOLS, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        call("get_weather", "Pariss"),
        {"role": "tool", "name": "get_weather", "content": json.dumps({"error": "unknown city Pariss"})},
        call("get_weather", "Paris"),
        {"role": "tool", "name": "get_weather", "content": json.dumps({"temp": 21})},
        {"role": "assistant", "content": "It is 21 degrees in Paris."},
    ]}, "test")


def test_error_feedback_detection():
    assert is_error_feedback('{"error": "bad"}') and is_error_feedback("Error: timeout")
    assert not is_error_feedback('{"temp": 3}') and not is_error_feedback("all good") and not is_error_feedback('["error"]')


def test_divergence_offsets():
    assert divergence_offsets("get_weather", ["get_time", "set_alarm", "get_weather"]) == {4, 0}
    assert divergence_offsets("get", ["get_time"]) == {3}  # a prefix of another name: the delimiter after it
    assert divergence_offsets("get_time", ["get"]) == {3}


def test_mae_zeroes_only_the_call_that_got_an_error(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rec = record()
    assert mae_masked_messages(rec["messages"]) == {1}
    r = render_conversation(tok, rec["messages"], rec["tools"])
    plain = r.assistant_mask()
    weights = make_weight_fn(mae=True)(r, rec)
    spans = {mi: r.token_range(s, e) for s, e, mi in r.spans}
    assert spans[1].any() and (weights[spans[1]] == 0).all()  # the failed call: in context, no loss
    assert (weights[spans[3]] == 1).all() and (weights[spans[5]] == 1).all()
    assert (weights[~plain] == 0).all()


def test_pkt_weights_key_tokens(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rec = record()
    r = render_conversation(tok, rec["messages"], rec["tools"])
    loss = r.assistant_mask()
    key = key_token_mask(r, rec["messages"], [t["function"]["name"] for t in TOOLS], loss)
    # Expected key tokens, found independently from character positions.
    expected = set()
    for start, end, mi in r.spans:
        expected.add(int(np.flatnonzero(r.token_range(start, end))[0]))  # first response token
        if rec["messages"][mi].get("tool_calls"):
            at = r.text.index("get_weather", start, end)
            for off in (0, 4):  # diverges from set_alarm at "g", from get_time at "w"
                expected.add(int(np.flatnonzero((r.offsets[:, 0] <= at + off) & (r.offsets[:, 1] > at + off))[0]))
    assert set(np.flatnonzero(key).tolist()) == expected

    for wmax in (2.0, 1000.0):
        weights = make_weight_fn(pkt_wmax=wmax)(r, rec)
        n_key, n_rest = len(expected), int(loss.sum()) - len(expected)
        assert np.allclose(weights[key], min(n_rest / n_key, wmax))
        assert (weights[loss & ~key] == 1).all() and (weights[~loss] == 0).all()


def test_mae_and_pkt_together(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rec = record()
    r = render_conversation(tok, rec["messages"], rec["tools"])
    weights = make_weight_fn(mae=True, pkt_wmax=9.0)(r, rec)
    masked = r.token_range(*[(s, e) for s, e, mi in r.spans if mi == 1][0])
    assert (weights[masked] == 0).all()  # a masked turn has no key tokens either
    assert weights.max() > 1


@pytest.mark.parametrize("content", [
    '{"error": "", "response": "21 degrees"}',  # ToolBench's format for a success
    '{"error": null, "temp": 21}', '{"error": {}}', '{"error" : \'\'}', '{"temp": 21}', "all good", '["error"]',
    '{"note": "{\\"error\\": \\"\\"}"}',
])
def test_an_empty_or_null_error_is_no_error(content):
    assert not is_error_feedback(content)


@pytest.mark.parametrize("content", [
    '{"error": "unknown city"}', '{"Error": {"code": 404}}', "Error: timeout", "{'error': 'quota exceeded'}",
    '{"response": "{\\"error\\": \\"boom\\"}"}',  # an error inside a response string
    '{"error": "", "response": "ConnectionError: refused"}',  # TL-Training's keywords, in what it says
    "get_weather() got an unexpected keyword argument 'town'", "Invalid API call", "name 'x' is not defined",
    "400 Client Error: Bad Request", "connection-error",
])
def test_an_error_is_judged_by_what_the_message_says(content):
    assert is_error_feedback(content)


def parallel_record(second_result, ids=True):
    calls = [{"type": "function", "function": {"name": n, "arguments": {"city": c}}, **({"id": f"c{k}"} if ids else {})}
             for k, (n, c) in enumerate([("get_weather", "Paris"), ("get_time", "Pariss")])]
    responses = [{"role": "tool", "content": json.dumps({"temp": 21}), **({"tool_call_id": "c0"} if ids else {})},
                 {"role": "tool", "content": json.dumps(second_result), **({"tool_call_id": "c1"} if ids else {})}]
    if ids:
        responses.reverse()  # answered out of order: matched by tool_call_id
    return normalize_record({"tools": TOOLS, "messages": [
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": calls},
        *responses,
        {"role": "assistant", "content": "21 degrees."},
    ]}, "test")


def test_failed_calls_are_placed_by_id_or_position():
    assert failed_calls(parallel_record({"error": "unknown city"})["messages"]) == {1: {1}}
    assert failed_calls(parallel_record({"error": "unknown city"}, ids=False)["messages"]) == {1: {1}}
    assert failed_calls(parallel_record({"error": "", "response": "10:00"})["messages"]) == {}
    assert mae_masked_messages(parallel_record({"error": "x"})["messages"]) == {1}


def test_mae_masks_only_the_failed_call_of_a_parallel_turn(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rec = parallel_record({"error": "unknown city"})
    r = render_conversation(tok, rec["messages"], rec["tools"])
    [(start, end, _)] = [s for s in r.spans if s[2] == 1]
    (s0, e0), (s1, e1) = r.call_spans[1]
    assert start == s0 < e0 == s1 < e1 <= end  # the calls tile the turn
    assert '"get_weather"' in r.text[s0:e0] and '"get_time"' in r.text[s1:e1] and "get_time" not in r.text[s0:e0]
    weights = make_weight_fn(mae=True)(r, rec)
    first, second = r.token_range(s0, e0), r.token_range(s1, e1)
    assert first.any() and second.any()
    assert (weights[first] == 1).all() and (weights[second] == 0).all()
    assert (weights[r.token_range(start, end) & ~first & ~second] == 1).all()  # the end of the turn
    ok = parallel_record({"error": "", "response": "10:00"})
    r_ok = render_conversation(tok, ok["messages"], ok["tools"])
    assert (make_weight_fn(mae=True)(r_ok, ok) == r_ok.assistant_mask()).all()  # an empty error masks nothing


def char_rendered(text, messages_index=1):
    """A rendering with one token per character and the whole text one assistant span."""
    return Rendered(text=text, ids=np.arange(len(text), dtype=np.int32),
                    offsets=np.array([[i, i + 1] for i in range(len(text))]), spans=[(0, len(text), messages_index)])


def test_pkt_key_token_of_a_name_that_prefixes_another():
    messages = [{"role": "user", "content": "?"},
                {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get", "arguments": {}}}]}]
    r = char_rendered('{"get"}')
    loss = np.ones(len(r.ids), bool)
    key = key_token_mask(r, messages, ["get", "get_time"], loss)
    assert np.flatnonzero(key).tolist() == [0, 5]  # the first token and the '"' after "get", not its "t"
    key = key_token_mask(r, messages, ["get", "got"], loss)
    assert np.flatnonzero(key).tolist() == [0, 3]  # where the names part: "e"


@pytest.mark.parametrize("text, expected_key_weight", [("x", 1.0), ("xy", 1.0), ("xyz", 2.0), ("xyzuvw", 3.0)])
def test_pkt_reweights_only_when_fewer_key_than_other_tokens(text, expected_key_weight):
    rec = {"tools": TOOLS, "messages": [{"role": "user", "content": "?"}, {"role": "assistant", "content": text}]}
    weights = make_weight_fn(pkt_wmax=3.0)(char_rendered(text), rec)
    assert weights[0] == expected_key_weight  # K = 1 key token, N = len(text) - 1: never below 1
    assert (weights[1:] == 1).all()
