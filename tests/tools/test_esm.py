"""ESM: each error type in both model formats, order-free parallel matching, score ordering,
never raising on arbitrary predictions."""

import functools
import itertools
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttpa_jax.tools import esm
from ttpa_jax.tools.assignment import match_name_first, min_cost_assignment
from ttpa_jax.tools.calls import render
from ttpa_jax.tools.esm import ErrorWeights, score
from ttpa_jax.tools.gold_values import matches_gold, standardize_string


def tool(name, properties, required=()):
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": name,
            "parameters": {"type": "object", "properties": properties, "required": list(required)},
        },
    }


TOOLS = [
    tool(
        "get_weather",
        {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}, "days": {"type": "integer"}},
        ["city"],
    ),
    tool(
        "search_flights",
        {"origin": {"type": "string"}, "destination": {"type": "string"}, "passengers": {"type": "integer"}},
        ["origin", "destination"],
    ),
    tool("convert", {"amount": {"type": "number"}, "currencies": {"type": "array", "items": {"type": "string"}}}, ["amount"]),
    tool(
        "book_hotel",
        {
            "stay": {
                "type": "object",
                "properties": {"hotel": {"type": "string"}, "nights": {"type": "integer"}},
                "required": ["hotel", "nights"],
            },
            "breakfast": {"type": "boolean"},
        },
        ["stay"],
    ),
]
GOLD = [{"name": "get_weather", "arguments": {"city": "Lyon", "unit": "celsius"}}]
FORMATS = ["qwen", "llama"]
NO_ERRORS = dict.fromkeys(esm.ERROR_TYPES, 0)


def call(name, **arguments):
    return {"name": name, "arguments": arguments}


def only(**errors):
    return {**NO_ERRORS, **errors}


def scored(calls, fmt, gold=GOLD):
    return score(render(calls, fmt), gold, TOOLS)


@pytest.mark.parametrize("fmt", FORMATS)
def test_exact_call_scores_one(fmt):
    r = scored([call("get_weather", city="Lyon", unit="celsius")], fmt)
    assert r.score == 1.0 and r.exact and r.errors == NO_ERRORS
    assert r.parse_status == "ok" and r.matches == [(0, 0)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_format_error(fmt):
    broken = {
        "qwen": '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>',
        "llama": '{"name": "get_weather", "parameters": {"city": "Ly',
    }[fmt]
    for text in (broken, "The weather in Lyon is nice."):
        r = score(text, GOLD, TOOLS, format=fmt)
        assert r.errors == only(format=1) and r.score == 0.0


@pytest.mark.parametrize("fmt", FORMATS)
def test_tool_hallucination(fmt):
    r = scored([call("get_forecast", city="Lyon", unit="celsius")], fmt)
    assert r.errors == only(tool_hallucination=1)
    assert "not among the given tools" in r.messages[0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_wrong_tool(fmt):
    r = scored([call("search_flights", origin="LYS", destination="Lyon")], fmt)
    assert r.errors == only(wrong_tool=1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_param_name_missing_hallucinated_redundant(fmt):
    r = scored([call("get_weather", unit="celsius")], fmt)
    assert r.errors == only(param_name=1) and r.param_name_kinds["missing"] == 1
    r = scored([call("get_weather", city="Lyon", unit="celsius", country="FR")], fmt)
    assert r.errors == only(param_name=1) and r.param_name_kinds["hallucinated"] == 1
    r = scored([call("get_weather", city="Lyon", unit="celsius", days=1)], fmt)
    assert r.errors == only(param_name=1) and r.param_name_kinds["redundant"] == 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_param_type(fmt):
    for bad in ({"city": 75001, "unit": "celsius"}, {"city": "Lyon", "unit": "kelvin"}, {"city": ["Lyon"], "unit": "celsius"}):
        r = scored([{"name": "get_weather", "arguments": bad}], fmt)
        assert r.errors == only(param_type=1), bad
    gold = [call("get_weather", city="Lyon", days=3)]
    for days in ("3", True, 3.5, None):
        r = scored([call("get_weather", city="Lyon", days=days)], fmt, gold)
        assert r.errors == only(param_type=1), days


@pytest.mark.parametrize("fmt", FORMATS)
def test_param_value(fmt):
    r = scored([call("get_weather", city="Paris", unit="celsius")], fmt)
    assert r.errors == only(param_value=1)
    r = scored([call("get_weather", city="Lyon", unit="fahrenheit")], fmt)
    assert r.errors == only(param_value=1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_light_normalisation_of_strings_and_numbers(fmt):
    gold = [call("get_weather", city="Saint-Étienne, France", unit="celsius", days=3)]
    pred = [call("get_weather", city="  saint étienne  france", unit="Celsius", days=3.0)]
    assert scored(pred, fmt, gold).exact
    gold = [call("convert", amount=3)]
    assert scored([call("convert", amount=3.0)], fmt, gold).exact
    assert scored([call("convert", amount=3.0000001)], fmt, gold).errors == only(param_value=1)
    assert scored([call("convert", amount=False)], fmt, [call("convert", amount=0)]).errors == only(param_type=1)


def test_acceptable_values_and_omissible_arguments():
    gold = [call("get_weather", city=["Lyon", "Lyon, France"], unit=["", "celsius"])]
    for pred in (call("get_weather", city="Lyon"), call("get_weather", city="lyon france", unit="celsius")):
        assert score([pred], gold, TOOLS).exact
    assert score([call("get_weather", city="Lyon", unit="fahrenheit")], gold, TOOLS).errors == only(param_value=1)
    # A required key the gold marks as omissible may be left out.
    gold = [call("get_weather", city=["", "Lyon"])]
    assert score([call("get_weather")], gold, TOOLS).exact


def test_array_values_follow_the_list_of_lists_rule():
    gold = [call("convert", amount=10, currencies=[["EUR", "USD"], ["EUR", "US dollar"]])]
    assert score([call("convert", amount=10, currencies=["eur", "US Dollar"])], gold, TOOLS).exact
    assert score([call("convert", amount=10, currencies=["USD", "EUR"])], gold, TOOLS).errors == only(param_value=1)
    assert score([call("convert", amount=10, currencies="EUR")], gold, TOOLS).errors == only(param_type=1)
    assert score([call("convert", amount=10, currencies=["EUR", 2])], gold, TOOLS).errors == only(param_type=1)
    # A plain list for an array parameter is one literal array.
    literal = [call("convert", amount=10, currencies=["EUR", "USD"])]
    assert score([call("convert", amount=10, currencies=["EUR", "USD"])], literal, TOOLS).exact
    assert score([call("convert", amount=10, currencies=["EUR"])], literal, TOOLS).errors == only(param_value=1)
    # For a non-array parameter a list is always a list of acceptable values.
    assert score([call("convert", amount=10.5)], [call("convert", amount=[10, 10.5])], TOOLS).exact


def test_nested_objects():
    gold = [call("book_hotel", stay={"hotel": "Ibis", "nights": 2})]
    assert score([call("book_hotel", stay={"hotel": "ibis", "nights": 2})], gold, TOOLS).exact
    assert score([call("book_hotel", stay={"hotel": "Ibis", "nights": 3})], gold, TOOLS).errors == only(param_value=1)
    r = score([call("book_hotel", stay={"hotel": "Ibis", "nights": "2"})], gold, TOOLS)
    assert r.errors == only(param_type=1) and "stay.nights" in r.messages[0]
    r = score([call("book_hotel", stay={"hotel": "Ibis"})], gold, TOOLS)
    assert r.errors == only(param_type=1) and "missing required key 'nights'" in r.messages[0]
    assert score([call("book_hotel", stay="Ibis")], gold, TOOLS).errors == only(param_type=1)
    # Nested properties follow the acceptable-values convention too.
    gold = [call("book_hotel", stay={"hotel": ["Ibis", "Ibis Lyon"], "nights": [2]}, breakfast=["", False])]
    assert score([call("book_hotel", stay={"hotel": "Ibis Lyon", "nights": 2})], gold, TOOLS).exact


@pytest.mark.parametrize("fmt", FORMATS)
def test_parallel_calls_match_in_any_order(fmt):
    gold = [
        call("get_weather", city="Lyon", unit="celsius"),
        call("get_weather", city="Porto", unit="celsius"),
        call("search_flights", origin="LYS", destination="OPO", passengers=2),
    ]
    for perm in itertools.permutations(gold):
        assert scored(list(perm), fmt, gold).exact
    wrong = [gold[2], call("get_weather", city="Porto", unit="fahrenheit"), gold[0]]
    r = scored(wrong, fmt, gold)
    assert r.errors == only(param_value=1)
    assert sorted(r.matches) == [(0, 2), (1, 1), (2, 0)]
    r = scored(gold[:2], fmt, gold)
    assert r.errors == only(wrong_tool=1) and (None, 2) in r.matches
    r = scored(gold + [call("get_weather", city="Nice")], fmt, gold)
    assert r.errors == only(wrong_tool=1)
    r = scored(gold + [call("get_news", topic="x")], fmt, gold)
    assert r.errors == only(tool_hallucination=1)


def test_many_parallel_calls_match_in_any_order():
    gold = [call("get_weather", city=f"City {i}", days=i) for i in range(12)]
    pred = [dict(c) for c in gold]
    random.Random(0).shuffle(pred)
    assert score(pred, gold, TOOLS).exact
    pred[3] = call("get_weather", city=pred[3]["arguments"]["city"], days=99)
    assert score(pred, gold, TOOLS).errors == only(param_value=1)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6).flatmap(lambda n: st.lists(st.lists(st.integers(0, 20), min_size=n, max_size=n), min_size=n, max_size=n)))
def test_assignment_is_optimal(cost):
    n = len(cost)
    perm = min_cost_assignment(cost)
    assert sorted(perm) == list(range(n))
    best = min(sum(cost[i][p[i]] for i in range(n)) for p in itertools.permutations(range(n)))
    assert sum(cost[i][perm[i]] for i in range(n)) == best


@pytest.mark.parametrize("fmt", FORMATS)
def test_parallel_calls_match_by_name_before_cost(fmt):
    # Two right tools, two key errors each: identity costs 4 * 0.4 = 1.6, the crosswise matching
    # 2 * 0.7 = 1.4 (two wrong tools). Name first keeps the identity.
    gold = [call("get_weather", city="Lyon"), call("search_flights", origin="Lyon", destination="Oslo")]
    pred = [call("get_weather", town="Lyon"), call("search_flights", origin="Lyon", dest="Oslo")]
    w = ErrorWeights()
    assert 2 * w.wrong_tool < 4 * w.param_name  # the case the rule exists for
    for p in (pred, pred[::-1]):
        r = scored(p, fmt, gold)
        assert r.errors == only(param_name=4) and r.param_name_kinds == {"missing": 2, "hallucinated": 2, "redundant": 0}
        assert sorted(r.matches) == ([(0, 0), (1, 1)] if p is pred else [(0, 1), (1, 0)])


def test_same_name_candidates_are_matched_by_least_error():
    gold = [call("get_weather", city="Lyon", days=1), call("get_weather", city="Oslo", days=2)]
    pred = [call("get_weather", city="Oslo", days=3), call("get_weather", city="Lyon", days=1)]
    r = score(pred, gold, TOOLS)
    assert sorted(r.matches) == [(0, 1), (1, 0)] and r.errors == only(param_value=1)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 4), st.integers(0, 4), st.data())
def test_name_first_matching_is_lexicographically_optimal(n_pred, n_gold, data):
    names = st.sampled_from("ab")
    pred = data.draw(st.lists(names, min_size=n_pred, max_size=n_pred))
    gold = data.draw(st.lists(names, min_size=n_gold, max_size=n_gold))
    n = max(n_pred, n_gold)
    table = data.draw(st.lists(st.lists(st.integers(0, 9), min_size=n, max_size=n), min_size=n, max_size=n))

    def cost(i, j):
        return table[n - 1 if i is None else i][n - 1 if j is None else j] + (0 if None not in (i, j) else 5)

    def key(pairs):
        same = sum(i is not None and j is not None and pred[i] == gold[j] for i, j in pairs)
        return -same, sum(cost(i, j) for i, j in pairs)

    got = match_name_first(pred, gold, cost)
    assert sorted(i for i, _ in got if i is not None) == list(range(n_pred))
    assert sorted(j for _, j in got if j is not None) == list(range(n_gold))
    best = min(key([(i if i < n_pred else None, p[i] if p[i] < n_gold else None) for i in range(n) if i < n_pred or p[i] < n_gold])
               for p in itertools.permutations(range(n)))
    assert key(got) == best


@pytest.mark.parametrize("fmt", FORMATS)
def test_scores_are_ordered(fmt):
    gold = [call("get_weather", city="Lyon", days=3)]
    variants = [
        [call("get_weather", city="Lyon", days=3)],  # exact
        [call("get_weather", city="Lyon", days=4)],  # wrong value
        [call("get_weather", city="Lyon", days="3")],  # wrong type
        [call("get_weather", days=3)],  # missing required
        [call("search_flights", origin="Lyon", destination="Paris")],  # wrong tool
        [call("get_forecast", city="Lyon", days=3)],  # hallucinated tool
    ]
    s = [scored(v, fmt, gold).score for v in variants]
    unparseable = score("<tool_call>\n{oops\n</tool_call>" if fmt == "qwen" else "{oops", gold, TOOLS).score
    assert s[0] == 1.0
    assert s[0] > s[1] > s[2] > s[3] > s[4] > s[5] >= unparseable == 0.0


def test_no_call_expected():
    assert score("It is sunny.", [], TOOLS).exact
    assert score([], [], TOOLS).score == 1.0
    assert score(render([GOLD[0]]), [], TOOLS).errors == only(wrong_tool=1)
    assert score("<tool_call>\n{oops\n</tool_call>", [], TOOLS).errors == only(format=1)


def test_weights_are_configurable_and_clipped():
    pred = [call("get_weather", city="Paris", unit="fahrenheit")]
    assert score(pred, GOLD, TOOLS).score == pytest.approx(1 - 2 * ErrorWeights().param_value)
    assert score(pred, GOLD, TOOLS, weights={"param_value": 0.5}).score == 0.0
    assert score(pred, GOLD, TOOLS, weights=ErrorWeights(param_value=0.1)).score == pytest.approx(0.8)
    many = [call("get_weather", city=f"C{i}", unit="x") for i in range(5)]
    assert score(many, GOLD, TOOLS).score == 0.0
    with pytest.raises(TypeError):
        score(pred, GOLD, TOOLS, weights={"typo": 1.0})


def test_tools_may_be_bare_function_dicts():
    bare = [t["function"] for t in TOOLS]
    assert score([call("get_weather", city="Lyon", unit="kelvin")], GOLD, bare).errors == only(param_type=1)


def test_resolve_gold_takes_first_acceptable_values():
    gold = [call("convert", amount=[10, 10.0], currencies=[["EUR", "USD"], ["EUR"]]), call("get_weather", city=["Lyon"], unit=["", "celsius"])]
    assert esm.resolve_gold(gold, TOOLS) == [call("convert", amount=10, currencies=["EUR", "USD"]), call("get_weather", city="Lyon")]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=25,
)
tool_names = st.sampled_from(["get_weather", "search_flights", "convert", "book_hotel", "nope", ""])
argument_dicts = st.dictionaries(st.sampled_from(["city", "unit", "days", "stay", "currencies", "amount", "x"]), json_values, max_size=4)
call_like = st.builds(lambda n, a: {"name": n, "arguments": a}, tool_names, argument_dicts | json_values)
GOLDS = [
    GOLD,
    [call("convert", amount=[1, 2.5], currencies=[["EUR"], ""]), call("book_hotel", stay={"hotel": ["Ibis"], "nights": [2]})],
    [],
]


def _check(result):
    assert 0.0 <= result.score <= 1.0
    assert set(result.errors) == set(esm.ERROR_TYPES)


@settings(max_examples=300, deadline=None)
@given(st.text(), st.sampled_from(GOLDS))
def test_score_never_raises_on_text(text, gold):
    _check(score(text, gold, TOOLS))


@settings(max_examples=300, deadline=None)
@given(json_values | st.lists(call_like, max_size=4) | call_like, st.sampled_from(GOLDS))
def test_score_never_raises_on_json(value, gold):
    _check(score(value, gold, TOOLS))
    text = json.dumps(value)
    _check(score(text, gold, TOOLS))
    _check(score(f"<tool_call>\n{text}\n</tool_call>", gold, TOOLS))


@functools.lru_cache(maxsize=1)
def _bfcl_standardize_string():
    """bfcl-eval's own ``standardize_string``, taken from its source (importing the checker pulls in
    every vendor SDK)."""
    import ast
    import importlib.util
    import re
    from pathlib import Path

    spec = importlib.util.find_spec("bfcl_eval")
    path = Path(spec.submodule_search_locations[0]) / "eval_checker" / "ast_eval" / "ast_checker.py"
    tree = ast.parse(path.read_text())
    [fn] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "standardize_string"]
    namespace = {"re": re}
    exec(compile(ast.Module([fn], []), str(path), "exec"), namespace)
    return namespace["standardize_string"]


STRINGS = ["April 1, 2024", "april 1,2024", "April 1 2024", "C#", "C", "a@b.com", "a b com", "New-York_City",
           "x^2 * y", "l'été", 'l"été', "Tab\there", "ÄÖÜ straße", "<=", ">=", "", " ", "3.14", "314", "C++"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(" ,./-_*^'\"#@"), max_size=12), max_size=3))
def test_string_normalisation_is_bfcls(extra):
    bfcl = _bfcl_standardize_string()
    for s in STRINGS + extra:
        assert standardize_string(s) == bfcl(s)
    for a in STRINGS + extra:
        for b in STRINGS[:6] + extra:
            assert matches_gold(a, b, {"type": "string"}) == (bfcl(a) == bfcl(b))


def test_string_normalisation_cases():
    gold = [call("get_weather", city="April 1, 2024")]
    assert score([call("get_weather", city="april 1,2024")], gold, TOOLS).exact
    assert score([call("get_weather", city="C")], [call("get_weather", city="C#")], TOOLS).errors == only(param_value=1)
    assert score([call("get_weather", city="a b com")], [call("get_weather", city="a@b.com")], TOOLS).errors == only(param_value=1)
