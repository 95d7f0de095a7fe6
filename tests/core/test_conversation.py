"""Record normalisation errors name the place and field; turns are enumerated with their context."""

import copy
import json

import pytest

from ttpa_jax.core.conversation import iter_turns, normalize_preference, normalize_record, normalize_tools
from ttpa_jax.core.jsonl import DataError

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def record():
    return {
        "id": "r1",
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Lyon?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"type": "function", "id": "c0", "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'}}],
            },
            {"role": "tool", "tool_call_id": "c0", "name": "get_weather", "content": {"temp_c": 14}},
            {"role": "assistant", "content": "It is 14 °C in Lyon."},
            {"role": "user", "content": "Thanks!"},
            {"role": "assistant", "content": "You're welcome."},
        ],
        "meta": {"source": "test"},
    }


def test_normalize_record_decodes_and_carries_fields():
    r = normalize_record(record(), "data.jsonl:1")
    call = r["messages"][2]
    assert call["content"] == ""
    assert call["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Lyon"}}
    assert json.loads(r["messages"][3]["content"]) == {"temp_c": 14}
    assert r["meta"] == {"source": "test"} and r["id"] == "r1"
    bare = {**record(), "tools": [WEATHER_TOOL["function"]]}
    assert normalize_record(bare, "x")["tools"] == [WEATHER_TOOL]
    no_params = normalize_tools([{"name": "now"}], "x")
    assert no_params[0]["function"]["parameters"] == {"type": "object", "properties": {}}


def broken(path, value):
    """A copy of the record with the field at ``path`` set to ``value`` (``...`` deletes it)."""
    r = copy.deepcopy(record())
    node = r
    for key in path[:-1]:
        node = node[key]
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return r


@pytest.mark.parametrize(
    "path, value, field, reason",
    [
        (["messages", 1, "role"], "human", "messages[1].role", "unknown role 'human'"),
        (["tools", 0, "function", "name"], ..., "tools[0].function.name", "missing"),
        (["tools", 0, "function", "parameters"], "city: str", "tools[0].function.parameters", "not a JSON Schema object"),
        (
            ["tools", 0, "function", "parameters", "properties", "city", "type"],
            "text",
            "tools[0].function.parameters.properties.city.type",
            "not a valid JSON Schema",
        ),
        (["tools", 0, "function", "parameters", "required"], "city", "tools[0].function.parameters.required", "not a valid JSON Schema"),
        (["tools", 0, "function", "parameters", "type"], "array", "tools[0].function.parameters.type", "must be 'object'"),
        (
            ["messages", 2, "tool_calls", 0, "function", "arguments"],
            '{"city": "Lyon"',
            "messages[2].tool_calls[0].function.arguments",
            "not JSON",
        ),
        (["messages", 2, "tool_calls", 0, "function", "arguments"], "[1, 2]", "messages[2].tool_calls[0].function.arguments", "JSON object"),
        (["messages", 2, "tool_calls", 0, "function", "name"], "get_forecast", "messages[2].tool_calls[0].function.name", "not among"),
        (["messages", 1, "content"], ..., "messages[1].content", "missing"),
        (["messages", 4, "content"], ..., "messages[4].content", "missing"),
        (["messages", 1, "content"], 42, "messages[1].content", "expected a string"),
        (["messages"], [], "messages", "non-empty list"),
        (["tools"], {"name": "get_weather"}, "tools", "expected a list"),
    ],
)
def test_normalize_record_errors_name_place_and_field(path, value, field, reason):
    with pytest.raises(DataError) as e:
        normalize_record(broken(path, value), "data.jsonl:17")
    message = str(e.value)
    assert message.startswith(f"data.jsonl:17: {field}: "), message
    assert reason in message


def test_duplicate_tool_names_are_rejected():
    with pytest.raises(DataError, match=r"tools\[1\].function.name: duplicate"):
        normalize_tools([WEATHER_TOOL, WEATHER_TOOL], "t.json")


def test_iter_turns_kinds_and_tool_results():
    turns = list(iter_turns(normalize_record(record(), "x")))
    assert [(t.index, t.kind) for t in turns] == [(2, "tool_call"), (4, "answer"), (6, "text")]
    call, answer, text = turns
    assert [m["role"] for m in call.prompt] == ["system", "user"]
    assert call.tool_results == []
    assert [json.loads(c) for c in answer.tool_results] == [{"temp_c": 14}]
    assert answer.message["content"] == "It is 14 °C in Lyon."
    assert len(text.prompt) == 6 and text.tool_results == []
    index, prompt, message, kind, results = call
    assert (index, kind) == (2, "tool_call")


def test_normalize_preference():
    base = normalize_record(record(), "x")
    pref = {
        "prompt": base["messages"][:2],
        "chosen": [{"role": "assistant", "content": "", "tool_calls": base["messages"][2]["tool_calls"]}],
        "rejected": {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_forecast", "arguments": "{}"}}]},
        "tools": [WEATHER_TOOL],
        "meta": {"gap": 0.03},
    }
    p = normalize_preference(pref, "pairs.jsonl:3")
    assert p["rejected"][0]["tool_calls"][0]["function"] == {"name": "get_forecast", "arguments": {}}
    assert len(p["chosen"]) == 1 and p["meta"] == {"gap": 0.03}
    with pytest.raises(DataError, match=r"pairs.jsonl:3: chosen: expected one assistant message"):
        normalize_preference({**pref, "chosen": pref["chosen"] * 2}, "pairs.jsonl:3")
    with pytest.raises(DataError, match=r"pairs.jsonl:3: rejected\[0\].role: expected 'assistant'"):
        normalize_preference({**pref, "rejected": [{"role": "user", "content": "x"}]}, "pairs.jsonl:3")
    bad_chosen = [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_forecast", "arguments": {}}}]}]
    with pytest.raises(DataError, match=r"chosen\[0\].tool_calls\[0\].function.name"):
        normalize_preference({**pref, "chosen": bad_chosen}, "pairs.jsonl:3")
    with pytest.raises(DataError, match=r"pairs.jsonl:3: prompt\[0\].role"):
        normalize_preference({**pref, "prompt": [{"role": "robot", "content": "x"}]}, "pairs.jsonl:3")
