"""The bundled tool library: schemas, executors, phrasing; and loading a user's library."""

import json
import random
import string

import jsonschema
import pytest

from ttpa_jax.construct import toolbox
from ttpa_jax.construct.checks import identifier_words, name_regex
from ttpa_jax.construct.generators.values import sample_object
from ttpa_jax.core.jsonl import DataError
from ttpa_jax.tools.library import argument_errors, bundled_path, bundled_tools, load_library, make_tool

TOOLS = list(bundled_tools())


def _sampled_args(tool, seed, optional_rate=0.5):
    spec = toolbox.REGISTRY[tool.name]
    rng = random.Random(seed)
    return sample_object(tool.parameters, rng, optional_rate, spec.values, joint=spec.joint(rng) if spec.joint else None)


def _kinds(schema, out):
    if isinstance(schema, dict):
        if "enum" in schema:
            out.add("enum")
        if schema.get("type"):
            out.add(schema["type"])
        for sub in list(schema.get("properties", {}).values()) + [schema.get("items")]:
            _kinds(sub, out)
    return out


def test_library_size_domains_and_registry():
    assert len(TOOLS) >= 60
    domains = toolbox.domains()
    assert len(domains) >= 8 and all(len(names) >= 5 for names in domains.values())
    assert {t.name for t in TOOLS} == set(toolbox.REGISTRY)
    raw = json.loads(bundled_path().read_text())
    assert len({t["function"]["name"] for t in raw}) == len(raw) == len(TOOLS)


def test_every_bundled_schema_is_valid_json_schema_with_realistic_features():
    kinds = set()
    for tool in TOOLS:
        jsonschema.Draft202012Validator.check_schema(tool.parameters)
        assert tool.parameters["type"] == "object" and tool.description
        assert set(tool.parameters["required"]) <= set(tool.parameters["properties"])
        _kinds(tool.parameters, kinds)
    assert {"string", "number", "integer", "boolean", "array", "object", "enum"} <= kinds
    assert any(set(t.parameters["required"]) < set(t.parameters["properties"]) for t in TOOLS)  # optional params
    nested = [t for t in TOOLS if any(p.get("type") == "object" or p.get("items", {}).get("type") == "object"
                                      for p in t.parameters["properties"].values())]
    assert len(nested) >= 2


@pytest.mark.parametrize("tool", TOOLS, ids=lambda t: t.name)
def test_executor_is_deterministic_and_returns_json(tool):
    for seed in range(6):
        args = _sampled_args(tool, seed, optional_rate=seed % 2)  # all optional params, then none
        assert argument_errors(tool, args) == [], args
        first = toolbox.execute(tool.name, json.loads(json.dumps(args)))
        second = toolbox.execute(tool.name, json.loads(json.dumps(args)))
        assert first == second
        assert isinstance(first, dict) and first
        assert json.loads(json.dumps(first, allow_nan=False)) == first
        assert "error" not in first, (args, first)


@pytest.mark.parametrize("tool", TOOLS, ids=lambda t: t.name)
def test_invalid_arguments_give_an_error_result(tool):
    args = _sampled_args(tool, 0, optional_rate=1.0)
    required = tool.parameters["required"]
    bad_calls = [{**args, "no_such_parameter": 1}, "not an object"]
    if required:
        bad_calls.append({k: v for k, v in args.items() if k != required[0]})
        first = required[0]
        wrong = 12345 if tool.parameters["properties"][first].get("type") == "string" else "twelve"
        bad_calls.append({**args, first: wrong})
    for bad in bad_calls:
        result = toolbox.execute(tool.name, bad)
        assert set(result) == {"error"} and isinstance(result["error"], str), bad


def test_refused_calls_and_exact_results():
    assert "error" in toolbox.execute("convert_currency", {"amount": 5, "from_currency": "EUR", "to_currency": "EUR"})
    assert "error" in toolbox.execute("convert_units", {"value": 3, "from_unit": "km", "to_unit": "kg"})
    assert "error" in toolbox.execute("evaluate_expression", {"expression": "1 / (3 - 3)"})
    assert "error" in toolbox.execute("evaluate_expression", {"expression": "__import__('os')"})
    assert toolbox.execute("convert_units", {"value": 2, "from_unit": "km", "to_unit": "m"}) == {"result": 2000, "unit": "m"}
    assert toolbox.execute("evaluate_expression", {"expression": "(12 + 7) * 3"})["result"] == 57
    assert toolbox.execute("solve_quadratic", {"a": 1, "b": -3, "c": 2})["roots"] == [1, 2]
    assert toolbox.execute("no_such_tool", {}) == {"error": "unknown tool 'no_such_tool'"}


def test_different_arguments_give_different_results():
    a = toolbox.execute("get_current_weather", {"city": "Lyon"})
    b = toolbox.execute("get_current_weather", {"city": "Oslo"})
    assert a != b and a["city"] == "Lyon"


@pytest.mark.parametrize("tool", TOOLS, ids=lambda t: t.name)
def test_phrasing_covers_every_parameter_without_leaking_names(tool):
    phrasing = toolbox.REGISTRY[tool.name].phrasing
    props = tool.parameters["properties"]
    assert set(phrasing.params) == set(props)
    assert set(phrasing.chained) <= set(props)
    for name, schema in props.items():
        if schema.get("type") == "boolean":
            assert isinstance(phrasing.params[name], tuple), "booleans need a phrase for true and for false"
    # Labels only use required parameters.
    required_args = {k: v for k, v in _sampled_args(tool, 1, 0.0).items()}
    phrasing.label.format(**{k: str(v) for k, v in required_args.items()})
    words = " ".join([phrasing.ask, *[p for p in phrasing.params.values() if isinstance(p, str)],
                      *[q for p in phrasing.params.values() if isinstance(p, tuple) for q in p],
                      *phrasing.chained.values()]).casefold()
    assert not any(name_regex(t.name).search(words) for t in TOOLS)
    assert not any(name_regex(p).search(words) for t in TOOLS for p in t.param_names if len(identifier_words(p)) > 1)


def test_user_tool_gets_the_bundled_executor_only_with_the_bundled_schema():
    weather = next(t for t in TOOLS if t.name == "get_current_weather")
    assert toolbox.executor_for(weather)({"city": "Lyon"}) == toolbox.execute("get_current_weather", {"city": "Lyon"})
    changed = make_tool({"type": "function", "function": {
        "name": "get_current_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}},
        "test")
    assert toolbox.executor_for(changed) is None


def test_loading_a_user_library(tmp_path):
    good = tmp_path / "tools.json"
    good.write_text(json.dumps([{"name": "ping", "description": "Ping a host.",
                                 "parameters": {"type": "object", "properties": {"host": {"type": "string"}}}}]))
    [tool] = load_library(str(good))
    assert tool.schema["type"] == "function" and tool.name == "ping"
    assert load_library("bundled") == TOOLS


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("[{", "invalid JSON"),
    ("{}", "non-empty JSON list"),
    (json.dumps([{"type": "function", "function": {"name": "x", "parameters": {
        "type": "object", "properties": {"a": {"type": "strng"}}}}}]), "not valid JSON Schema at properties/a/type"),
    (json.dumps([{"type": "function", "function": {"name": "x", "parameters": {"type": "array"}}}]), "\"type\": \"object\""),
    (json.dumps([{"type": "function", "function": {"name": "bad name!", "parameters": {"type": "object"}}}]),
     "function.name"),
    (json.dumps([{"type": "function", "function": {"name": "x"}}] * 2), "more than once"),
])
def test_library_errors_name_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "lib.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as e:
        load_library(str(path))
    assert str(path) in str(e.value) and message in str(e.value)


def test_identifier_words_and_split_forms():
    assert identifier_words("get_weather") == ["get", "weather"]
    assert identifier_words("getWeatherNow") == ["get", "weather", "now"]
    assert identifier_words("HTTPStatus-code2") == ["http", "status", "code", "2"]
    pattern = name_regex("get_weather")
    for text in ["get_weather", "get weather", "get-weather", "getweather", "GetWeather".casefold()]:
        assert pattern.search(f"please {text} now")
    assert not pattern.search("forget weathering")
    assert not pattern.search("get the weather")


def test_sampled_strings_are_plain_text():
    allowed = set(string.printable)
    for tool in TOOLS:
        for value in json.dumps(_sampled_args(tool, 7, 1.0)):
            assert value in allowed


WITH_MISTAKES = [t for t in TOOLS if toolbox.REGISTRY[t.name].mistakes]


def test_most_tools_have_a_mistake():
    assert len(WITH_MISTAKES) >= 50
    assert toolbox.mistake_for(next(t for t in TOOLS if t.name == "get_crypto_price")) is None


@pytest.mark.parametrize("tool", WITH_MISTAKES, ids=lambda t: t.name)
def test_a_mistake_fits_the_schema_and_the_tool_refuses_it(tool):
    make = toolbox.mistake_for(tool)
    applied = 0
    for seed in range(12):
        args = _sampled_args(tool, seed, optional_rate=seed % 2)
        made = make(args, random.Random(seed))
        if made is None:
            continue
        applied += 1
        wrong, error = made
        assert wrong != args and argument_errors(tool, wrong) == []
        assert set(error) == {"error"} and isinstance(error["error"], str)
        assert toolbox.execute(tool.name, json.loads(json.dumps(wrong))) == error  # same arguments, same refusal
        assert make(args, random.Random(seed)) == made
        assert "error" not in toolbox.execute(tool.name, args)
    assert applied >= 1


def test_mistake_rules():
    from ttpa_jax.construct.toolbox.mistakes import misspelled, one_edit_apart, typo

    assert toolbox.execute("get_current_weather", {"city": "Lisvon"}) == {"error": "unknown city 'Lisvon'"}
    assert "error" not in toolbox.execute("get_current_weather", {"city": "Paris"})  # unknown, not a misspelling
    assert toolbox.execute("book_flight", {"flight_id": "FL-0821", "passenger_name": "Ana Silva"}) == \
        {"error": "no flight FL-0821"}
    assert "error" not in toolbox.execute("book_flight", {"flight_id": "FL-4821", "passenger_name": "Ana Silva"})
    past = toolbox.execute("search_flights", {"origin": "Lyon", "destination": "Oslo", "departure_date": "2024-03-14"})
    assert past == {"error": "departure date 2024-03-14 is in the past"}
    assert "fraction" in toolbox.execute("calculate_loan_payment", {"principal": 5000, "annual_rate": 0.039,
                                                                    "term_months": 12})["error"]
    assert "error" not in toolbox.execute("calculate_loan_payment", {"principal": 5000, "annual_rate": 0,
                                                                     "term_months": 12})
    assert "error" in toolbox.execute("send_sms", {"phone_number": "+1604876759", "message": "hi"})
    assert "error" not in toolbox.execute("send_sms", {"phone_number": "+33612345678", "message": "hi"})
    assert "error" in toolbox.execute("get_exchange_rate", {"base_currency": "EUR", "quote_currency": "EUR"})
    assert one_edit_apart("lisbon", "lisvon") and one_edit_apart("lisbon", "lisbn") and one_edit_apart("oslo", "osslo")
    assert not one_edit_apart("oslo", "oslo") and not one_edit_apart("oslo", "olso")
    assert misspelled("LISVON", ["Lisbon"]) and not misspelled("lisbon", ["Lisbon"])
    word = typo("Lisbon", random.Random(0))
    assert word != "Lisbon" and word[0] + word[-1] == "Ln" and one_edit_apart(word.lower(), "lisbon")
    assert typo("ab", random.Random(0)) is None
