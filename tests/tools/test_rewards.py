"""Rewards: TL-Training's error-category table row by row, parallel calls, and the uniform signature."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttpa_jax.tools.calls import render
from ttpa_jax.tools.esm import score
from ttpa_jax.tools.rewards import REWARDS, TL_REWARDS, esm_reward, tl_reward


def tool(name, properties, required=()):
    params = {"type": "object", "properties": properties, "required": list(required)}
    return {"type": "function", "function": {"name": name, "description": name, "parameters": params}}


TOOLS = [
    tool("get_weather", {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                         "days": {"type": "integer"}}, ["city"]),
    tool("search_flights", {"origin": {"type": "string"}, "destination": {"type": "string"}}, ["origin", "destination"]),
]
GOLD = [{"name": "get_weather", "arguments": {"city": "Lyon", "unit": "celsius"}}]


def call(name, **arguments):
    return {"name": name, "arguments": arguments}


def w(**arguments):
    return [call("get_weather", **arguments)]


@pytest.mark.parametrize("pred, expected", [
    ("It is sunny in Lyon.", -2.0),  # no call
    ("<tool_call>\n{oops\n</tool_call>", -2.0),  # unparsable
    ([call("get_forecast", city="Lyon", unit="celsius")], -2.0),  # hallucinated tool
    ([call("search_flights", origin="Lyon", destination="Oslo")], -1.5),  # wrong tool
    (w(city="Lyon"), -0.5),  # missing
    (w(city="Lyon", unit="celsius", country="FR"), -0.8),  # hallucinated
    (w(city="Lyon", unit="celsius", days=2), -0.5),  # redundant
    (w(city="Lyon", country="FR"), -1.3),  # missing + hallucinated
    (w(city="Lyon", days=2), -1.0),  # redundant + missing
    (w(city="Lyon", unit="celsius", days=2, country="FR"), -1.3),  # hallucinated + redundant
    (w(city="Lyon", days=2, country="FR"), -1.8),  # all three
    (w(city="Paris", unit="celsius"), -0.25),  # wrong value
    (w(city="Lyon", unit="kelvin"), -0.25),  # wrong type counts as a wrong value
    (w(city="Lyon", unit="celsius"), 1.0),  # exact
], ids=["no_call", "unparsable", "hallucinated_tool", "wrong_tool", "missing", "hallucinated", "redundant",
        "missing+hallucinated", "redundant+missing", "hallucinated+redundant", "all_three", "wrong_value",
        "wrong_type", "exact"])
@pytest.mark.parametrize("fmt", ["qwen", "llama"])
def test_official_table_row(pred, expected, fmt):
    text = pred if isinstance(pred, str) else render(pred, fmt)
    assert tl_reward(text, GOLD, TOOLS) == expected
    if not isinstance(pred, str):
        assert tl_reward(pred, GOLD, TOOLS) == expected  # parsed calls give the same reward


def test_table_values_are_the_official_ones():
    assert TL_REWARDS == {
        "unparsable": -2.0, "hallucinated_tool": -2.0, "wrong_tool": -1.5,
        "hallucinated+missing+redundant": -1.8, "hallucinated+missing": -1.3, "hallucinated+redundant": -1.3,
        "missing+redundant": -1.0, "hallucinated": -0.8, "redundant": -0.5, "missing": -0.5,
        "wrong_value": -0.25, "exact": 1.0,
    }


def test_first_category_decides():
    assert tl_reward(w(city="Paris"), GOLD, TOOLS) == -0.5  # a key error hides the wrong value
    gold = [call("search_flights", origin="Lyon", destination="Oslo")]
    assert tl_reward([call("search_flights")], gold, TOOLS) == -0.5  # two keys missing: the same as one
    omissible = [call("get_weather", city=["Lyon"], unit=["", "celsius"])]
    assert tl_reward(w(city="lyon"), omissible, TOOLS) == 1.0  # gold lets unit be left out; strings normalised


def test_parallel_calls_are_matched_by_name_and_the_worst_call_decides():
    gold = [call("get_weather", city="Lyon"), call("search_flights", origin="Lyon", destination="Oslo")]
    crossed = [call("get_weather", town="Lyon"), call("search_flights", origin="Lyon", dest="Oslo")]
    assert tl_reward(crossed, gold, TOOLS) == -1.3  # two right tools with key errors, not two wrong tools
    assert tl_reward(gold[::-1], gold, TOOLS) == 1.0  # order-free
    assert tl_reward([gold[0], call("search_flights", origin="Lyon", destination="Rome")], gold, TOOLS) == -0.25
    assert tl_reward(gold[:1], gold, TOOLS) == -1.5  # a missing call
    assert tl_reward(gold + [call("get_weather", city="Nice")], gold, TOOLS) == -1.5  # an extra call
    assert tl_reward(gold + [call("get_news", topic="x")], gold, TOOLS) == -2.0  # an extra unknown tool


def test_no_call_expected():
    assert tl_reward("Hello!", [], TOOLS) == 1.0
    assert tl_reward(w(city="Lyon"), [], TOOLS) == -1.5


def test_esm_reward_is_the_esm_score():
    for pred in (w(city="Lyon", unit="celsius"), w(city="Paris", unit="celsius"), w(days=2), "no call"):
        assert esm_reward(pred, GOLD, TOOLS) == score(pred, GOLD, TOOLS).score
    assert esm_reward(w(city="Paris", unit="celsius"), GOLD, TOOLS, weights={"param_value": 0.5}) == 0.5


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=15,
)
call_like = st.builds(lambda n, a: {"name": n, "arguments": a},
                      st.sampled_from(["get_weather", "search_flights", "nope", ""]),
                      st.dictionaries(st.sampled_from(["city", "unit", "days", "origin", "x"]), json_values, max_size=3))


@settings(max_examples=200, deadline=None)
@given(st.text() | st.lists(call_like, max_size=3) | json_values, st.sampled_from([GOLD, []]))
def test_every_reward_takes_text_or_calls_and_never_raises(pred, gold):
    table = set(TL_REWARDS.values())
    for name, fn in REWARDS.items():
        for p in (pred, json.dumps(pred) if not isinstance(pred, str) else pred):
            r = fn(p, gold, TOOLS, format="auto")
            assert isinstance(r, float)
            assert r in table if name == "tl" else 0.0 <= r <= 1.0
