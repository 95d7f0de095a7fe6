"""Tool-call rendering and parsing: Qwen2.5, Llama 3.1, generic JSON; never raising on model output."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttpa_jax.tools import calls as toolcalls
from ttpa_jax.tools.calls import parse, render

WEATHER = {"name": "get_weather", "arguments": {"city": "Lyon", "unit": "celsius"}}
FLIGHTS = {"name": "search_flights", "arguments": {"origin": "LYS", "destination": "OPO", "passengers": 2}}


def test_qwen_single_call_with_text_before():
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lyon", "unit": "celsius"}}\n</tool_call>'
    r = parse(text, "qwen")
    assert r.status == "ok"
    assert r.calls == [WEATHER]
    assert r.content == "Let me check."


def test_qwen_several_calls_and_string_arguments():
    text = (
        '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Lyon\\", \\"unit\\": \\"celsius\\"}"}\n</tool_call>\n'
        '<tool_call>\n{"name": "search_flights", "arguments": {"origin": "LYS", "destination": "OPO", "passengers": 2}}\n</tool_call>'
    )
    r = parse(text, "qwen")
    assert r.status == "ok"
    assert r.calls == [WEATHER, FLIGHTS]


def test_qwen_unclosed_last_block_still_parses():
    r = parse('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lyon"}}', "qwen")
    assert r.status == "ok"
    assert r.calls == [{"name": "get_weather", "arguments": {"city": "Lyon"}}]


def test_qwen_broken_block_is_malformed_and_partial_when_others_parse():
    broken = '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>'
    good = '<tool_call>\n{"name": "search_flights", "arguments": {"origin": "LYS", "destination": "OPO", "passengers": 2}}\n</tool_call>'
    r = parse(broken, "qwen")
    assert (r.status, r.calls) == ("malformed", [])
    assert "block 0" in r.errors[0]
    r = parse(broken + "\n" + good, "qwen")
    assert r.status == "partial"
    assert r.calls == [FLIGHTS]
    assert len(r.errors) == 1


def test_qwen_block_with_non_object_arguments_is_malformed():
    r = parse('<tool_call>\n{"name": "get_weather", "arguments": [1, 2]}\n</tool_call>', "qwen")
    assert r.status == "malformed"
    assert "JSON object" in r.errors[0]


def test_llama_python_tag_and_separators():
    one = '{"name": "get_weather", "parameters": {"city": "Lyon", "unit": "celsius"}}'
    two = '{"name": "search_flights", "parameters": {"origin": "LYS", "destination": "OPO", "passengers": 2}}'
    for text in (one + "; " + two, "<|python_tag|>" + one + ";" + two, one + "\n" + two):
        r = parse(text, "llama")
        assert r.status == "ok", text
        assert r.calls == [WEATHER, FLIGHTS]


def test_llama_function_tag_form():
    r = parse('<function=get_weather>{"city": "Lyon", "unit": "celsius"}</function>', "llama")
    assert (r.status, r.calls) == ("ok", [WEATHER])


def test_llama_plain_answer_is_no_call_and_truncated_call_is_malformed():
    assert parse("It is 14 degrees in Lyon.", "llama").status == "no_call"
    assert parse('{"temp_c": 14}', "llama").status == "no_call"
    r = parse('{"name": "get_weather", "parameters": {"city": "Ly', "llama")
    assert (r.status, r.calls) == ("malformed", [])
    r = parse('{"name": "get_weather", "parameters": {"city": "Lyon", "unit": "celsius"}}\n{"name": "search_fl', "llama")
    assert (r.status, r.calls) == ("partial", [WEATHER])


def test_generic_json_in_fence_and_openai_shape():
    text = 'Sure:\n```json\n[{"name": "get_weather", "arguments": {"city": "Lyon", "unit": "celsius"}}]\n```'
    assert parse(text).calls == [WEATHER]
    text = 'Calling {"type": "function", "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Lyon\\", \\"unit\\": \\"celsius\\"}"}} now'
    assert parse(text).calls == [WEATHER]


def test_generic_text_that_names_a_call_but_holds_none_is_malformed():
    r = parse('I would call {"name": "get_weather", "arguments": {"city": oops} here')
    assert r.status == "malformed"


def test_auto_picks_the_format():
    q = render([WEATHER, FLIGHTS], "qwen")
    l = render([WEATHER, FLIGHTS], "llama")
    assert parse(q).calls == parse(q, "qwen").calls == [WEATHER, FLIGHTS]
    assert parse(l).calls == parse(l, "llama").calls == [WEATHER, FLIGHTS]
    assert parse("Hello there").status == "no_call"


def test_render_matches_the_chat_template_shapes():
    assert render([WEATHER], "qwen") == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lyon", "unit": "celsius"}}\n</tool_call>'
    )
    assert render([WEATHER], "qwen", content="Checking.").startswith("Checking.\n<tool_call>\n")
    assert render([WEATHER], "llama") == '{"name": "get_weather", "parameters": {"city": "Lyon", "unit": "celsius"}}'
    with pytest.raises(ValueError):
        render([WEATHER], "llama", content="text")
    with pytest.raises(ValueError):
        render([WEATHER], "mistral")


def test_openai_message_helpers():
    msg = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "id": "c1", "function": {"name": "get_weather", "arguments": json.dumps(WEATHER["arguments"])}},
            {"type": "function", "id": "c2", "function": {"name": "search_flights", "arguments": FLIGHTS["arguments"]}},
        ],
    }
    assert toolcalls.calls_from_message(msg) == [WEATHER, FLIGHTS]
    built = toolcalls.message_from_calls([WEATHER], content="ok")
    assert built == {
        "role": "assistant",
        "content": "ok",
        "tool_calls": [{"type": "function", "id": "call_0", "function": WEATHER}],
    }
    assert toolcalls.message_from_calls([]) == {"role": "assistant", "content": ""}
    with pytest.raises(ValueError, match=r"tool_calls\[0\]"):
        toolcalls.calls_from_message({"tool_calls": [{"function": {"name": "f", "arguments": "{nope"}}]})
    text = render([WEATHER], "qwen", content="Checking.")
    assert toolcalls.message_from_text(text) == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [{"type": "function", "id": "call_0", "function": WEATHER}],
    }
    assert toolcalls.message_from_text("Just text") == {"role": "assistant", "content": "Just text"}


def test_parse_value_for_decoded_predictions():
    assert toolcalls.parse_value([WEATHER]).calls == [WEATHER]
    assert toolcalls.parse_value({"name": "get_weather", "parameters": {"city": "Lyon", "unit": "celsius"}}).calls == [WEATHER]
    assert toolcalls.parse_value([]).status == "no_call"
    r = toolcalls.parse_value([WEATHER, 3, {"name": ""}])
    assert r.status == "partial" and len(r.errors) == 2
    assert toolcalls.parse_value(None).status == "malformed"


def test_deeply_nested_output_does_not_raise():
    deep = '{"name": "f", "arguments": ' + '{"a": ' * 5000 + "1" + "}" * 5001
    r = parse(deep)
    assert r.calls == [] and r.status in ("malformed", "no_call")
    r = parse("<tool_call>" + "[" * 100000 + "</tool_call>")
    assert r.status == "malformed"
    nested = {"name": "f", "arguments": {"a": 1}}
    for _ in range(70):
        nested["arguments"] = {"a": [nested["arguments"]]}
    assert parse(json.dumps(nested)).status == "malformed"


names = st.text(st.characters(categories=("L", "N"), include_characters="_.-"), min_size=1, max_size=20).filter(str.strip)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
calls = st.lists(
    st.builds(lambda n, a: {"name": n.strip(), "arguments": a}, names, st.dictionaries(st.text(max_size=10), json_values, max_size=4)),
    min_size=1,
    max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(calls, st.sampled_from(["qwen", "llama"]))
def test_render_then_parse_round_trips(cs, fmt):
    r = parse(render(cs, fmt), fmt)
    assert r.status == "ok"
    assert r.calls == cs
    assert parse(render(cs, fmt)).calls == cs


@settings(max_examples=300, deadline=None)
@given(st.text(), st.sampled_from(["qwen", "llama", "auto"]))
def test_parse_never_raises_on_text(text, fmt):
    r = parse(text, fmt)
    assert r.status in ("ok", "no_call", "malformed", "partial")
    assert all(isinstance(c["name"], str) and isinstance(c["arguments"], dict) for c in r.calls)
