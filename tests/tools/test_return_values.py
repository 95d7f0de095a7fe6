"""Return-value parsing, the rule of ``return_value_accuracy``: echoed inputs are no value to parse, an
echo of the tool output and a tool call on an answer turn are wrong (each counted apart), the earlier
rule stays computable (``return_value_accuracy_v1``), and ``rescore`` re-reads an evaluation file."""

import json

import pytest

from ttpa_jax.core.conversation import normalize_record
from ttpa_jax.evaluate import metrics
from ttpa_jax.tools.calls import render
from ttpa_jax.tools.return_values import check_answer, echoes_tool_output, json_share, judge_answer, states

TICKET = {
    "type": "function",
    "function": {"name": "get_ticket", "parameters": {"type": "object", "properties": {"ticket": {"type": "string"}}}},
}
CALL = {"name": "get_ticket", "arguments": {"ticket": "DR-3987", "region": "EMEA"}}
RESULT = json.dumps({"ticket": "DR-3987", "region": "EMEA", "status": "shipped", "eta_days": 2.5, "carrier": "Parcelo"})
REFERENCE = "Ticket DR-3987 has shipped with Parcelo; it should arrive in 2.5 days."
PROMPT = [
    {"role": "user", "content": "Where is my ticket DR-3987?"},
    {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "id": "c0", "function": CALL}]},
    {"role": "tool", "tool_call_id": "c0", "content": RESULT},
]


def judge(prediction, reference=REFERENCE, results=(RESULT,), prompt=PROMPT):
    return judge_answer(prediction, reference, list(results), prompt)


def test_echoed_inputs_are_not_needed():
    # the user's id and the call's arguments are echoed inputs; what the tool added is needed
    v = judge("It has shipped with Parcelo and should arrive in about 2.5 days.")
    assert (v.needed, v.found, v.reason, v.correct) == (["shipped", 2.5, "Parcelo"], ["shipped", 2.5, "Parcelo"], "ok", True)
    # the earlier rule asks for the id the user gave too, so this fluent answer failed it
    assert check_answer("It has shipped with Parcelo and should arrive in about 2.5 days.", REFERENCE, [RESULT]) == (
        ["DR-3987", "shipped", 2.5, "Parcelo"], ["shipped", 2.5, "Parcelo"])
    assert judge("DR-3987 has shipped.").reason == "missing_values"
    # a reference that mentions echoed inputs only leaves nothing to judge
    v = judge("Your ticket DR-3987 is in EMEA.", reference="Ticket DR-3987 is handled in EMEA.")
    assert (v.needed, v.judged, v.reason) == ([], False, "unjudged")


def test_inputs_must_state_the_exact_value():
    assert states("about 14 degrees", 14) and not states("about 14 degrees", 14.26) and states("it is 14.260", 14.26)
    assert states("ticket dr-3987, please", "DR-3987") and not states("DR-39870", "DR-3987")
    # a user's rounded number does not hide the precise value the tool returned
    prompt = [{"role": "user", "content": "Is it above 14 degrees in Lyon?"}]
    v = judge_answer("Yes, 14.3 degrees.", "Yes: 14.26 °C.", ['{"temp_c": 14.26}'], prompt)
    assert (v.needed, v.reason) == ([14.26], "ok")


def test_numbers_round_as_before():
    results = ['{"temp_c": 14.26, "sky": "cloudy"}']
    assert judge_answer("Cloudy, 14.3 degrees.", "Cloudy and 14.26 °C.", results).reason == "ok"
    assert judge_answer("Cloudy, 14 degrees.", "Cloudy and 14.26 °C.", results).reason == "ok"
    v = judge_answer("Cloudy, 14.2 degrees.", "Cloudy and 14.26 °C.", results)
    assert (v.found, v.reason) == (["cloudy"], "missing_values")


@pytest.mark.parametrize(
    "prediction",
    [
        RESULT,  # the raw result, as most zero-shot answers of a small model were
        json.dumps(json.loads(RESULT), indent=2),  # re-indented
        f"<tool_response>\n{RESULT}\n</tool_response>",
        "<tool_response>It has shipped with Parcelo and arrives in 2.5 days.",  # a marker is enough
        f"Here is what I found: {RESULT} Let me know if you need more.",  # the whole result inside prose
        '```json\n{"status": "shipped", "carrier": "Parcelo", "eta_days": 2.5}\n```',  # mostly JSON
    ],
)
def test_echo_of_the_tool_output_is_wrong(prediction):
    v = judge(prediction)
    assert v.judged and v.reason == "echo" and not v.correct
    assert v.found  # it mentions the values: the earlier rule could count it as parsed


def test_echo_criterion_edges():
    long_text = "The parcel left the Lyon depot this morning."
    assert echoes_tool_output(f"Your order: {long_text}", [long_text])
    assert not echoes_tool_output("It says: all good here.", ["all good here"])  # under 20 characters
    assert not echoes_tool_output("It shipped [1] with Parcelo (see [2]).", [RESULT])
    assert json_share('{"a": 1}') == 1.0 and json_share("") == 0.0 and json_share("x {not json} y") == 0.0
    assert 0 < json_share('The answer is {"a": 1}') < 0.5


@pytest.mark.parametrize(
    "prediction",
    [
        render([CALL], "qwen"),
        render([CALL], "llama"),
        "It has shipped with Parcelo in 2.5 days. " + render([CALL], "qwen"),  # an answer, then another call
        [CALL],  # calls already parsed
    ],
)
def test_tool_call_on_an_answer_turn_is_wrong(prediction):
    v = judge(prediction)
    assert v.judged and v.reason == "tool_call" and not v.correct


def record(rid, prediction_turn_content):
    return normalize_record({"id": rid, "tools": [TICKET], "messages": [*PROMPT, {"role": "assistant", "content": prediction_turn_content}]}, rid)


def test_evaluate_items_counts_each_reason():
    records = [record(f"r{i}", REFERENCE) for i in range(5)] + [record("u", "It is handled in EMEA.")]
    items = metrics.items_from_records(records)
    preds = {("r0", 3): "It has shipped with Parcelo and should arrive in 2.5 days.",
             ("r1", 3): f"<tool_response>\n{RESULT}\n</tool_response>",
             ("r2", 3): render([CALL], "qwen"),
             ("r3", 3): "DR-3987 has shipped.",
             ("r4", 3): "DR-3987 has shipped with Parcelo, arriving in 2.5 days.",
             ("u", 3): render([CALL], "qwen")}
    result = metrics.evaluate_items(items, preds)
    assert result["return_value_accuracy"] == 0.4 and result["judged_answer_turns"] == 5
    assert (result["answer_turn_tool_calls"], result["answer_echoes_tool_output"], result["answer_missing_values"]) == (1, 1, 1)
    assert result["answer_turn_tool_call_rate"] == 0.2 and result["answer_echo_rate"] == 0.2
    assert result["unjudged_answer_turns"] == 1  # its call is in its row, not in the counts
    # the earlier rule: the echo passes, and so does the call that repeats the argument "EMEA" the
    # reference of "u" mentions; the fluent answer without the user's id fails
    assert result["return_value_accuracy_v1"] == 0.5 and result["judged_answer_turns_v1"] == 6
    rows = {r["id"]: r["return_values"] for r in result["per_turn"]}
    assert [rows[k]["reason"] for k in ("r0", "r1", "r2", "r3", "r4", "u")] == [
        "ok", "echo", "tool_call", "missing_values", "ok", "tool_call"]
    assert rows["r3"] == {"needed": ["shipped", 2.5, "Parcelo"], "found": ["shipped"], "reason": "missing_values"}
    table = metrics.format_table({"m": result})
    for line in ("| Return-value parsing | 40.0% |", "| Return-value parsing, earlier rule (v1) | 50.0% |",
                 "| Answer turns that call a tool | 20.0% |", "| Answer turns that echo the tool output | 20.0% |",
                 "| Judged answer turns: tool call | 1 |", "| Judged answer turns: echo of the tool output | 1 |",
                 "| Judged answer turns: values missing | 1 |"):
        assert line in table.splitlines(), line


def test_rescore_reads_predictions_from_per_turn():
    records = [record("r0", REFERENCE), record("r1", REFERENCE)]
    items = metrics.items_from_records(records)
    preds = {("r0", 3): RESULT, ("r1", 3): "It has shipped with Parcelo, 2.5 days to go."}
    result = metrics.evaluate_items(items, preds)
    # a file written before this rule: the old keys only, through JSON
    old = json.loads(json.dumps({k: v for k, v in result.items() if not k.startswith("answer_")
                                 and not k.endswith("_v1")}))
    for row in old["per_turn"]:
        row["return_values"].pop("reason", None)
    again = metrics.rescore(old, items)
    assert again == json.loads(json.dumps(result))
    assert again["return_value_accuracy"] == 0.5 and again["answer_echoes_tool_output"] == 1
