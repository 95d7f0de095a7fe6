"""Fine-grained evaluation: metrics as a pure function, the markdown table, return-value parsing,
and ``python -m ttpa_jax.evaluate --predictions`` end to end with its error messages."""

import json
import subprocess
import sys

import pytest

from ttpa_jax.core.conversation import normalize_record
from ttpa_jax.core.jsonl import write_jsonl
from ttpa_jax.evaluate import evaluator as evaluate
from ttpa_jax.tools.calls import render
from ttpa_jax.tools.return_values import check_answer, mentions, result_values

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
FLIGHTS = {
    "type": "function",
    "function": {
        "name": "search_flights",
        "parameters": {
            "type": "object",
            "properties": {"origin": {"type": "string"}, "destination": {"type": "string"}, "passengers": {"type": "integer"}},
            "required": ["origin", "destination"],
        },
    },
}


def tool_calls(*calls):
    return [{"type": "function", "id": f"c{i}", "function": c} for i, c in enumerate(calls)]


LYON = {"name": "get_weather", "arguments": {"city": "Lyon"}}
PORTO = {"name": "get_weather", "arguments": {"city": "Porto"}}
FLIGHT = {"name": "search_flights", "arguments": {"origin": "LYS", "destination": "OPO", "passengers": 2}}
RECORDS = [
    {
        "id": "w1",
        "tools": [WEATHER, FLIGHTS],
        "messages": [
            {"role": "user", "content": "Weather in Lyon and Porto?"},
            {"role": "assistant", "content": "", "tool_calls": tool_calls(LYON, PORTO)},
            {"role": "tool", "tool_call_id": "c0", "content": json.dumps({"temp_c": 14.26, "sky": "cloudy", "ok": True})},
            {"role": "tool", "tool_call_id": "c1", "content": json.dumps({"temp_c": 21, "sky": "sunny"})},
            {"role": "assistant", "content": "Lyon: 14.3 °C and cloudy. Porto: 21 °C and sunny."},
        ],
    },
    {
        "id": "f2",
        "tools": [WEATHER, FLIGHTS],
        "messages": [
            {"role": "user", "content": "Flights from Lyon to Porto for two?"},
            {"role": "assistant", "content": "", "tool_calls": tool_calls(FLIGHT)},
        ],
    },
    {
        "id": "t3",
        "tools": [WEATHER],
        "messages": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    },
]
FLIGHT_3 = {**FLIGHT, "arguments": {**FLIGHT["arguments"], "passengers": 3}}
PREDICTIONS = [
    {"id": "w1", "turn": 1, "prediction": render([PORTO, LYON], "qwen")},
    {"id": "w1", "turn": 4, "prediction": "In Lyon it is 14.3 degrees and cloudy; Porto has 21 degrees, sunny skies."},
    {"id": "f2", "prediction": render([FLIGHT_3], "llama")},
    {"id": "t3", "turn": 1, "prediction": "Hello!"},
]
EXPECTED = {
    "tool_selection_accuracy": 1.0,
    "param_name_accuracy": 1.0,
    "param_value_accuracy": 0.5,
    "format_validity": 1.0,
    "esm_score": pytest.approx(0.9),
    "return_value_accuracy": 1.0,
    "no_call_accuracy": 1.0,
    "errors": {"format": 0, "tool_hallucination": 0, "wrong_tool": 0, "param_name": 0, "param_type": 0, "param_value": 1},
    "turns": {"tool_call": 2, "answer": 1, "text": 1},
    "missing_predictions": 0,
}


def normalized():
    return [normalize_record(r, f"test:{i}") for i, r in enumerate(RECORDS, 1)]


def keyed(preds):
    return {(p["id"], p.get("turn", 1)): p["prediction"] for p in preds}


def test_evaluate_predictions_is_pure_and_complete():
    result = evaluate.evaluate_predictions(normalized(), keyed(PREDICTIONS))
    for key, value in EXPECTED.items():
        assert result[key] == value, key
    rows = {(r["id"], r["turn"]): r for r in result["per_turn"]}
    assert rows["f2", 1]["errors"]["param_value"] == 1 and "passengers" in rows["f2", 1]["messages"][0]
    assert rows["w1", 4]["return_values"]["needed"] == [14.26, "cloudy", 21, "sunny"]
    # each turn's prediction text is kept next to its verdict
    assert {key: row["prediction"] for key, row in rows.items()} == keyed(PREDICTIONS)


def test_missing_and_wrong_answers_are_counted():
    preds = keyed(PREDICTIONS)
    preds["w1", 4] = "It is cloudy in Lyon."
    del preds["t3", 1]
    preds["w1", 1] = "Let me look that up."
    result = evaluate.evaluate_predictions(normalized(), preds)
    assert result["return_value_accuracy"] == 0.0
    assert result["missing_predictions"] == 1 and result["no_call_accuracy"] is None
    assert result["format_validity"] == 0.5 and result["tool_selection_accuracy"] == 0.5
    assert result["errors"]["format"] == 1
    rows = {(r["id"], r["turn"]): r for r in result["per_turn"]}
    assert rows["w1", 4]["return_values"]["found"] == ["cloudy"]


def test_return_value_rules():
    assert result_values(['{"a": {"b": [1.5, "x y"]}, "c": null, "d": false}', "plain text", "[2, 2]"]) == [1.5, "x y", "plain text", 2]
    assert mentions("about 14.3 degrees", 14.26) and mentions("about 14 degrees", 14.26)
    assert not mentions("about 14.2 degrees", 14.26)
    assert mentions("a total of 1,234 dollars", 1234) and not mentions("a total of 1234.5", 1234)
    assert mentions("Status: IN-TRANSIT.", "in transit") and not mentions("transitory", "transit")
    assert not mentions("version 21.5", 2)
    needed, found = check_answer("It is sunny.", "Sunny and 21 °C.", ['{"sky": "sunny", "temp_c": 21, "wind": 5}'])
    assert (needed, found) == (["sunny", 21], ["sunny"])
    assert check_answer("anything", "No values here.", ['{"sky": "sunny"}']) == ([], [])


def test_earlier_return_value_rule_is_kept():
    """``return_value_accuracy_v1`` gives on these fixtures what the metric gave before echoes and
    answer-turn calls were judged (tests/tools/test_return_values.py covers the current rule)."""
    items = evaluate.items_from_records(normalized())
    wrong = {**keyed(PREDICTIONS), ("w1", 4): "It is cloudy in Lyon."}
    echo = {**keyed(PREDICTIONS), ("w1", 4): " ".join(m["content"] for m in RECORDS[0]["messages"][2:4])}
    for preds, v1, current in [(keyed(PREDICTIONS), 1.0, 1.0), (wrong, 0.0, 0.0), (echo, 1.0, 0.0)]:
        result = evaluate.evaluate_items(items, preds)
        assert (result["return_value_accuracy_v1"], result["return_value_accuracy"]) == (v1, current)
        assert result["judged_answer_turns_v1"] == result["judged_answer_turns"] == 1


def test_format_table_side_by_side():
    base = evaluate.evaluate_predictions(normalized(), keyed(PREDICTIONS))
    worse = evaluate.evaluate_predictions(normalized(), {**keyed(PREDICTIONS), ("f2", 1): "no call"})
    table = evaluate.format_table({"base": base, "worse": worse})
    lines = table.splitlines()
    assert lines[0] == "| Metric | base | worse |"
    assert "| Parameter values | 50.0% | 50.0% |" in lines
    assert "| Tool selection | 100.0% | 50.0% |" in lines
    assert "| ESM score (mean) | 0.900 | 0.500 |" in lines
    assert "| Errors: format | 0 | 1 |" in lines
    only_calls = evaluate.evaluate_items([i for i in evaluate.items_from_records(normalized()) if i.kind == "tool_call"], keyed(PREDICTIONS))
    table = evaluate.format_table({"calls": only_calls})
    assert "Return-value parsing" not in table and "| Format validity | 100.0% |" in table


RECOVERY = {
    "id": "r4",
    "tools": [WEATHER],
    "messages": [
        {"role": "user", "content": "Weather in Lyon?"},
        {"role": "assistant", "content": "", "tool_calls": tool_calls({"name": "get_weather", "arguments": {"city": "Lyn"}})},
        {"role": "tool", "tool_call_id": "c0", "content": json.dumps({"error": "unknown city: Lyn"})},
        {"role": "assistant", "content": "", "tool_calls": tool_calls(LYON)},
        {"role": "tool", "tool_call_id": "c0", "content": json.dumps({"temp_c": 14})},
        {"role": "assistant", "content": "14 °C in Lyon."},
    ],
}


def test_failed_calls_are_not_scored(tmp_path):
    items = evaluate.items_from_records([normalize_record(RECOVERY, "test:4")])
    assert [(i.turn, i.kind) for i in items] == [(3, "tool_call"), (5, "answer")]
    assert items[0].gold_calls == [LYON] and items[0].prompt[2]["content"] == json.dumps({"error": "unknown city: Lyn"})
    data, preds = tmp_path / "data.jsonl", tmp_path / "preds.jsonl"
    write_jsonl(data, [*RECORDS, RECOVERY])
    write_jsonl(preds, [*PREDICTIONS, {"id": "r4", "turn": 3, "prediction": render([LYON], "qwen")},
                        {"id": "r4", "turn": 5, "prediction": "It is 14 degrees."}])
    proc = run_cli("--data", data, "--predictions", preds, "--out", tmp_path / "m.json")
    assert proc.returncode == 0, proc.stderr
    assert "1 failed tool calls (answered by an error) not scored" in proc.stderr
    result = json.loads((tmp_path / "m.json").read_text())["model"]
    assert result["turns"] == {"tool_call": 3, "answer": 2, "text": 1} and result["missing_predictions"] == 0


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ttpa_jax.evaluate", *map(str, args)], capture_output=True, text=True)


def test_cli_predictions_end_to_end(tmp_path):
    data, preds, out = tmp_path / "data.jsonl", tmp_path / "preds.jsonl", tmp_path / "out" / "metrics.json"
    write_jsonl(data, RECORDS)
    write_jsonl(preds, PREDICTIONS)
    proc = run_cli("--data", data, "--predictions", preds, "--out", out, "--name", "mine")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())["mine"]
    for key, value in EXPECTED.items():
        assert result[key] == value, key
    rows = {(r["id"], r["turn"]): r for r in result["per_turn"]}  # --out: each prediction next to its verdict
    assert rows["f2", 1]["prediction"] == PREDICTIONS[2]["prediction"] and rows["f2", 1]["errors"]["param_value"] == 1
    assert rows["w1", 4]["prediction"] == PREDICTIONS[1]["prediction"] and rows["w1", 4]["return_values"]["found"]
    assert "| Metric | mine |" in proc.stdout
    assert "| Parameter values | 50.0% |" in proc.stdout
    assert "| Return-value parsing | 100.0% |" in proc.stdout
    assert result["esm_weights"]["param_value"] == 0.2  # the weights the esm_score used are recorded
    proc = run_cli("--data", data, "--predictions", preds, "--out", out, "--esm.param-value", "0.5")
    assert json.loads(out.read_text())["model"]["esm_weights"]["param_value"] == 0.5, proc.stderr


def test_cli_errors_name_file_and_line(tmp_path):
    data, preds = tmp_path / "data.jsonl", tmp_path / "preds.jsonl"
    write_jsonl(data, RECORDS)
    preds.write_text(json.dumps(PREDICTIONS[0]) + "\n{not json\n")
    proc = run_cli("--data", data, "--predictions", preds)
    assert proc.returncode != 0
    assert f"{preds}:2: invalid JSON" in proc.stderr
    proc = run_cli("--data", tmp_path / "missing.jsonl", "--predictions", preds)
    assert proc.returncode != 0 and f"{tmp_path / 'missing.jsonl'}: no such file" in proc.stderr


@pytest.mark.parametrize(
    "line, message",
    [
        ({"id": "w1", "turn": 1, "prediction": 42}, "'prediction' must be model text or a list of calls"),
        ({"turn": 1, "prediction": "x"}, "'id' missing"),
        ({"id": "zzz", "prediction": "x"}, "id 'zzz' is not in the test set"),
        ({"id": "w1", "prediction": "x"}, "'turn' missing and record 'w1' has 2 turns"),
        ({"id": "w1", "turn": 2, "prediction": "x"}, "record 'w1' has no assistant turn 2"),
        ({"id": "w1", "turn": "1", "prediction": "x"}, "'turn' must be an integer"),
        (PREDICTIONS[0], "a second prediction for record 'w1' turn 1"),
    ],
)
def test_bad_prediction_lines(tmp_path, capsys, line, message):
    data, preds = tmp_path / "data.jsonl", tmp_path / "preds.jsonl"
    write_jsonl(data, RECORDS)
    write_jsonl(preds, [PREDICTIONS[0], line])
    assert evaluate.main(["--data", str(data), "--predictions", str(preds)]) == 2
    err = capsys.readouterr().err
    assert f"{preds}:2: {message}" in err


def test_bad_data_and_bad_options(tmp_path, capsys):
    data, preds = tmp_path / "data.jsonl", tmp_path / "preds.jsonl"
    bad = json.loads(json.dumps(RECORDS))
    bad[1]["messages"][0]["role"] = "customer"
    write_jsonl(data, bad)
    write_jsonl(preds, PREDICTIONS)
    assert evaluate.main(["--data", str(data), "--predictions", str(preds)]) == 2
    assert f"{data}:2: messages[0].role: unknown role 'customer'" in capsys.readouterr().err
    assert evaluate.main(["--predictions", str(preds)]) == 2
    assert "--data FILE or --bfcl" in capsys.readouterr().err
    assert evaluate.main(["--data", str(data)]) == 2
    assert "--predictions FILE, --model DIR or --endpoint URL" in capsys.readouterr().err


def test_help_documents_every_field():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for flag in ("--data", "--bfcl", "--bfcl-mode", "--limit", "--predictions", "--model", "--out", "--name", "--format",
                 "--max-new-tokens", "--batch-size", "--no-progress"):
        assert flag in proc.stdout
    assert "SFT JSONL test set" in proc.stdout and "Decoding budget" in proc.stdout
