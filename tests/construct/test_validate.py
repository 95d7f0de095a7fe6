"""Validation of constructed records: leakage, schema, answer values, recoverable facts."""

import copy
import json

from ttpa_jax.construct import toolbox
from ttpa_jax.construct.checks import check_record, leaked_names, mentions, salient_items
from ttpa_jax.tools.library import bundled_tools

BY_NAME = {t.name: t for t in bundled_tools()}
FLIGHT_ARGS = {"origin": "Lyon", "destination": "Oslo", "departure_date": "2025-03-14", "passengers": 2}


def _record(query, calls, answer=None, tools=("search_flights", "book_flight", "get_current_weather")):
    """A record with one user turn; ``calls`` are (name, arguments); results come from the executors."""
    messages = [{"role": "user", "content": query}]
    results = []
    for i, (name, args) in enumerate(calls):
        result = toolbox.execute(name, args)
        results.append(result)
        messages.append({"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "id": f"call_{i}", "function": {"name": name, "arguments": args}}]})
        messages.append({"role": "tool", "tool_call_id": f"call_{i}", "name": name, "content": json.dumps(result)})
    if answer is None:
        answer = " ".join(str(v) for (name, args), r in zip(calls, results) for _, v in salient_items(r, args)[:2])
    messages.append({"role": "assistant", "content": answer})
    return {"id": "x", "tools": [BY_NAME[n].schema for n in tools], "messages": messages}


def _reasons(record, **kw):
    return {r.reason for r in check_record(record, **kw)}


def test_a_clean_record_passes():
    record = _record("Could you find flights from Lyon to Oslo on 2025-03-14 for 2 travellers?",
                     [("search_flights", FLIGHT_ARGS)])
    assert check_record(record) == []


def test_query_naming_a_tool_is_rejected_in_every_split_form():
    for name in ["search_flights", "search flights", "Search-Flights", "searchFlights", "SEARCHFLIGHTS",
                 "get current weather", "book_flight"]:
        record = _record(f"Please {name} from Lyon to Oslo on 2025-03-14 for 2 travellers.",
                         [("search_flights", FLIGHT_ARGS)])
        assert "query_names_tool" in _reasons(record), name


def test_query_naming_a_parameter_is_rejected_but_everyday_words_are_not():
    leaky = _record("Find flights from Lyon to Oslo, departure date 2025-03-14, for 2 travellers.",
                    [("search_flights", FLIGHT_ARGS)])
    assert _reasons(leaky) == {"query_names_parameter"}
    # A distractor's parameter counts too (book_flight has passenger_name).
    assert leaked_names("the passenger-name is Ana", [BY_NAME["book_flight"]]) == ([], ["passenger_name"])
    # Single-word parameter names (origin, destination, city, units) are plain words.
    plain = _record("Find flights with origin Lyon and destination Oslo on 2025-03-14 for 2 travellers in any city.",
                    [("search_flights", FLIGHT_ARGS)])
    assert check_record(plain) == []


def test_schema_validation_rejects_bad_calls():
    for bad in [{**FLIGHT_ARGS, "passengers": "two"}, {**FLIGHT_ARGS, "seat": "window"},
                {k: v for k, v in FLIGHT_ARGS.items() if k != "origin"},
                {**FLIGHT_ARGS, "departure_date": "14/03/2025"}, {**FLIGHT_ARGS, "passengers": 12}]:
        record = _record("Find flights from Lyon to Oslo on 2025-03-14 for 2 travellers two window 12 14/03/2025.",
                         [("search_flights", bad)], answer="Nothing found.")
        assert "invalid_call" in _reasons(record), bad
    unknown = _record("Rent a car in Lyon.", [("rent_car", {"pickup_city": "Lyon", "pickup_date": "2025-03-01",
                                                             "days": 2})])
    assert "unknown_tool" in _reasons(unknown)


def test_answer_must_carry_returned_values():
    record = _record("Could you find flights from Lyon to Oslo on 2025-03-14 for 2 travellers?",
                     [("search_flights", FLIGHT_ARGS)], answer="I found some flights from Lyon to Oslo.")
    assert _reasons(record) == {"answer_missing_values"}


def test_facts_must_be_recoverable_from_the_query_or_earlier_results():
    search = toolbox.execute("search_flights", FLIGHT_ARGS)
    flight_id = search["flights"][0]["flight_id"]
    calls = [("search_flights", FLIGHT_ARGS), ("book_flight", {"flight_id": flight_id, "passenger_name": "Ana Silva"})]
    good = _record("Find flights from Lyon to Oslo on 2025-03-14 for 2 travellers, then book the cheapest one "
                   "for Ana Silva.", calls)
    assert check_record(good) == []
    missing_name = _record("Find flights from Lyon to Oslo on 2025-03-14 for 2 travellers, then book the cheapest "
                           "one for me.", calls)
    assert _reasons(missing_name) == {"unrecoverable_argument"}
    # A value from a *later* result does not count.
    reordered = copy.deepcopy(good)
    reordered["messages"] = [reordered["messages"][0]] + reordered["messages"][3:5] + reordered["messages"][1:3] \
        + reordered["messages"][5:]
    assert "unrecoverable_argument" in _reasons(reordered)


def test_shape_and_call_count():
    record = _record("Could you find flights from Lyon to Oslo on 2025-03-14 for 2 travellers?",
                     [("search_flights", FLIGHT_ARGS)])
    assert _reasons(record, min_calls=2, max_calls=7) == {"call_count"}
    truncated = copy.deepcopy(record)
    truncated["messages"] = truncated["messages"][:-1]
    assert _reasons(truncated) == {"malformed_record"}
    orphan = copy.deepcopy(record)
    orphan["messages"][2]["tool_call_id"] = "call_9"
    assert _reasons(orphan) == {"malformed_record"}


def test_mentions():
    assert mentions("It costs 1,234.50 dollars", 1234.5)
    assert mentions("about 14.3 degrees", 14.27)
    assert not mentions("about 14.3 degrees", 14.2)
    assert mentions("Unit: m.", "m") and not mentions("meters", "m")
    assert mentions("flight FL-1234 leaves", "FL-1234") and not mentions("flight FL-12345", "FL-1234")
    assert not mentions("yes", True)


def test_validate_cli_reports_rejections_by_reason(tmp_path, capsys):
    from ttpa_jax.construct.validate import main

    clean = _record("Could you find flights from Lyon to Oslo on 2025-03-14 for 2 travellers?",
                    [("search_flights", FLIGHT_ARGS)])
    leaky = _record("Please search_flights from Lyon to Oslo on 2025-03-14 for 2 travellers.",
                    [("search_flights", FLIGHT_ARGS)])
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [clean, leaky, clean]) + "\n")
    assert main([str(path)]) == 1
    out = capsys.readouterr().out
    assert "2 of 3 records pass" in out and f"query_names_tool: 1 (e.g. {path}:2:" in out
    path.write_text(json.dumps(clean) + "\n")
    assert main([str(path)]) == 0
    assert main([str(tmp_path / "missing.jsonl")]) == 2


PAST_ARGS = {**FLIGHT_ARGS, "departure_date": "2024-03-14"}  # refused: a date in the past
FLIGHT_QUERY = "Could you find flights from Lyon to Oslo on 2025-03-14 for 2 travellers?"


def _failed_first(calls, failed_calls, query=FLIGHT_QUERY, answer=None):
    record = _record(query, calls, answer, tools=("search_flights", "get_current_weather", "get_historical_weather"))
    record["meta"] = {"failed_calls": failed_calls}
    return record


def test_a_failed_call_followed_by_its_correction_passes_when_meta_names_it():
    calls = [("search_flights", PAST_ARGS), ("search_flights", FLIGHT_ARGS)]
    record = _failed_first(calls, [0])
    assert json.loads(record["messages"][2]["content"]) == {"error": "departure date 2024-03-14 is in the past"}
    assert check_record(record, min_calls=1, max_calls=1) == []  # the failed call is not counted
    # Without the claim, the wrong date is a value the query does not state, as before.
    del record["meta"]
    assert _reasons(record) == {"unrecoverable_argument"}


def test_a_claimed_failed_call_must_fail_and_be_corrected_by_the_next_call():
    good = [("search_flights", PAST_ARGS), ("search_flights", FLIGHT_ARGS)]
    for failed in ([1], [0, 1], [5], "0", [True]):
        assert "invalid_recovery" in _reasons(_failed_first(good, failed)), failed
    other_tool = [("search_flights", PAST_ARGS), ("get_current_weather", {"city": "Lyon"})]
    assert "invalid_recovery" in _reasons(_failed_first(other_tool, [0], FLIGHT_QUERY + " Also the weather in Lyon."))
    fails_again = [("search_flights", PAST_ARGS), ("search_flights", PAST_ARGS)]
    assert "invalid_recovery" in _reasons(_failed_first(fails_again, [0], answer="No flights found."))
    succeeded = [("search_flights", FLIGHT_ARGS), ("search_flights", {**FLIGHT_ARGS, "passengers": 3})]
    assert "invalid_recovery" in _reasons(_failed_first(succeeded, [0], FLIGHT_QUERY + " Or 3 travellers."))


def test_a_failed_calls_error_result_is_no_source_of_values():
    calls = [("search_flights", PAST_ARGS), ("search_flights", FLIGHT_ARGS),
             ("get_historical_weather", {"city": "Lyon", "date": "2024-03-14"})]
    hidden = _failed_first(calls, [0], FLIGHT_QUERY + " And what was the weather in Lyon back then?")
    assert _reasons(hidden) == {"unrecoverable_argument"}
    stated = _failed_first(calls, [0], FLIGHT_QUERY + " And what was the weather in Lyon on 2024-03-14?")
    assert check_record(stated) == []
