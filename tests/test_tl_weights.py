"""TL-Training's token weighting on hand-made conversations: MAE masks, PKT key tokens and weights."""

import json

import numpy as np
from transformers import AutoTokenizer

from ttpa_jax.core.conversation import is_error_feedback, mae_masked_messages, normalize_record
from ttpa_jax.text.render import render_conversation
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
    assert divergence_offsets("get", ["get_time"]) == {2}  # a prefix of another name: its last character


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
