"""BFCL (Python AST sets) read from the installed bfcl-eval package and scored with ESM: every
possible answer scores 1.0, and each kind of perturbation is flagged with its error type."""

import json
import subprocess
import sys
from collections import Counter

import pytest

from ttpa_jax.evaluate import bfcl
from ttpa_jax.tools import esm
from ttpa_jax.core.conversation import normalize_tools
from ttpa_jax.core.jsonl import DataError
from ttpa_jax.tools.calls import render

SETS = {"simple": "simple_python", "multiple": "multiple", "parallel": "parallel", "parallel_multiple": "parallel_multiple"}
ROOT = bfcl.data_dir()
ITEMS = bfcl.load_items(list(SETS))
NO_ERRORS = dict.fromkeys(esm.ERROR_TYPES, 0)


def raw_answers():
    """Ground truth straight from the package files, by id."""
    out = {}
    for stem in SETS.values():
        with open(ROOT / "possible_answer" / f"BFCL_v4_{stem}.json", encoding="utf-8") as f:
            for line in f:
                obj = json.loads(line)
                out[obj["id"]] = obj["ground_truth"]
    return out


ANSWERS = raw_answers()


def first_value(acceptable):
    """BFCL: the first acceptable value; ``""`` first means leave the argument out (None here)."""
    value = acceptable[0]
    if isinstance(value, str) and value == "":
        return None
    return resolve(value)


def resolve(value):
    """Nested BFCL answers: dict values (also in lists of dicts) are lists of acceptable values."""
    if isinstance(value, dict):
        out = {k: first_value(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not None}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [resolve(v) for v in value]
    return value


def prediction(item_id):
    calls = []
    for entry in ANSWERS[item_id]:
        (name, args), = entry.items()
        resolved = {k: first_value(v) for k, v in args.items()}
        calls.append({"name": name, "arguments": {k: v for k, v in resolved.items() if v is not None}})
    return calls


def only(**errors):
    return {**NO_ERRORS, **errors}


def params_of(item, name):
    for t in item.tools:
        if t["function"]["name"] == name:
            return t["function"]["parameters"]
    raise AssertionError(name)


def test_all_entries_are_loaded():
    counts = Counter(item.category for item in ITEMS)
    for category, stem in SETS.items():
        with open(ROOT / f"BFCL_v4_{stem}.json", encoding="utf-8") as f:
            ids = [json.loads(line)["id"] for line in f if line.strip()]
        assert counts[category] == len(ids) > 0
    assert {item.id for item in ITEMS} == set(ANSWERS)
    item = next(i for i in ITEMS if i.id == "simple_python_0")
    assert item.prompt[0]["role"] == "user" and item.turn == 1 and item.kind == "tool_call"


def test_converted_tools_are_json_schema():
    seen = set()
    for item in ITEMS:
        key = json.dumps(item.tools, sort_keys=True)
        if key not in seen:
            seen.add(key)
            normalize_tools(item.tools, item.id)


@pytest.mark.parametrize("fmt", ["qwen", "llama"])
def test_possible_answers_score_one(fmt):
    failures = []
    for item in ITEMS:
        r = esm.score(render(prediction(item.id), fmt), item.gold_calls, item.tools)
        if not (r.exact and r.score == 1.0):
            failures.append((item.id, r.errors, r.messages))
    assert failures == []


def wrong_type_value(schema):
    return {"string": 12345, "integer": "not a number", "number": "not a number", "boolean": "yes",
            "array": "not an array", "object": "not an object"}.get(schema.get("type"))


def outside_value(schema, acceptable):
    t = schema.get("type")
    if "enum" in schema:
        return None
    if t == "string":
        return "zz not an answer"
    numbers = [a for a in acceptable if isinstance(a, (int, float)) and not isinstance(a, bool)]
    if t == "integer":
        return int(max(numbers, default=0)) + 1000
    if t == "number":
        return max(numbers, default=0) + 1000.5
    return None


def test_perturbed_answers_are_flagged():
    exercised = Counter()
    failures = []

    def check(kind, item, calls, expected, name_kind=None):
        r = esm.score(render(calls), item.gold_calls, item.tools)
        ok = r.errors == expected and (name_kind is None or r.param_name_kinds[name_kind] == 1)
        exercised[kind] += 1
        if not ok:
            failures.append((kind, item.id, r.errors, r.messages))

    for item in ITEMS:
        base = prediction(item.id)
        first, rest = base[0], base[1:]
        gold_first = item.gold_calls[0]["arguments"]
        props = params_of(item, first["name"]).get("properties", {})

        def with_args(args, name=first["name"]):
            return [{"name": name, "arguments": args}] + rest

        check("hallucinated tool", item, with_args(first["arguments"], first["name"] + "_v2"), only(tool_hallucination=1))
        gold_names = {c["name"] for c in item.gold_calls}
        spare = [t["function"]["name"] for t in item.tools if t["function"]["name"] not in gold_names]
        if spare:
            check("wrong tool", item, with_args(first["arguments"], spare[0]), only(wrong_tool=1))
        check("extra argument", item, with_args({**first["arguments"], "unexpected_argument": 1}), only(param_name=1), "hallucinated")
        needed = [k for k in first["arguments"] if "" not in gold_first[k]]
        if needed:
            args = {k: v for k, v in first["arguments"].items() if k != needed[0]}
            check("dropped argument", item, with_args(args), only(param_name=1), "missing")
        typed = [k for k in first["arguments"] if k in props and wrong_type_value(props[k]) is not None]
        if typed:
            check("wrong type", item, with_args({**first["arguments"], typed[0]: wrong_type_value(props[typed[0]])}), only(param_type=1))
        valued = [k for k in first["arguments"] if k in props and outside_value(props[k], gold_first[k]) is not None]
        if valued:
            k = valued[0]
            check("value outside the acceptable list", item, with_args({**first["arguments"], k: outside_value(props[k], gold_first[k])}), only(param_value=1))
        enums = [k for k in first["arguments"] if k in props and "enum" in props[k]]
        if enums:
            check("value outside the enum", item, with_args({**first["arguments"], enums[0]: "zz not in enum"}), only(param_type=1))

    assert failures == []
    n = len(ITEMS)
    assert exercised["hallucinated tool"] == exercised["extra argument"] == n
    assert exercised["wrong tool"] >= 200
    assert exercised["dropped argument"] >= 0.95 * n
    assert exercised["wrong type"] >= 0.95 * n
    assert exercised["value outside the acceptable list"] >= 0.9 * n
    assert exercised["value outside the enum"] >= 50


def test_schema_conversion():
    schema = {
        "type": "dict",
        "properties": {
            "x": {"type": "float", "description": "x"},
            "pair": {"type": "tuple", "items": {"type": "integer"}},
            "data": {"type": "any"},
            "opts": {"type": "dict", "properties": {"flag": {"type": "boolean", "optional": True}}},
        },
        "required": ["x"],
    }
    assert bfcl.to_json_schema(schema) == {
        "type": "object",
        "properties": {
            "x": {"type": "number", "description": "x"},
            "pair": {"type": "array", "items": {"type": "integer"}},
            "data": {},
            "opts": {"type": "object", "properties": {"flag": {"type": "boolean"}}},
        },
        "required": ["x"],
    }
    with pytest.raises(DataError, match="HashMap"):
        bfcl.to_json_schema({"type": "HashMap"})


def test_missing_package_and_unknown_category_errors():
    with pytest.raises(bfcl.BFCLNotInstalled, match="pip install --no-deps bfcl-eval"):
        bfcl.data_dir("ttpa_jax_no_such_package")
    with pytest.raises(DataError, match="unknown BFCL category 'simple_java'"):
        bfcl.load_items(["simple_java"])


def test_evaluate_cli_on_bfcl_predictions(tmp_path):
    chosen = [i for i in ITEMS if i.category in ("simple", "parallel")]
    lines = []
    for k, item in enumerate(chosen):
        calls = prediction(item.id)
        if k % 4 == 0:  # every fourth answer names a tool that does not exist
            calls[0] = {**calls[0], "name": calls[0]["name"] + "_v2"}
        lines.append(json.dumps({"id": item.id, "prediction": render(calls)}))
    preds = tmp_path / "preds.jsonl"
    preds.write_text("\n".join(lines) + "\n")
    out = tmp_path / "bfcl.json"
    cmd = [sys.executable, "-m", "ttpa_jax.evaluate", "--bfcl", "simple,parallel", "--predictions", str(preds), "--out", str(out), "--name", "m"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert set(results) == {"m", "m parallel", "m simple"}
    hallucinated = len(range(0, len(chosen), 4))
    assert results["m"]["errors"]["tool_hallucination"] == hallucinated
    assert results["m"]["tool_selection_accuracy"] == pytest.approx(1 - hallucinated / len(chosen))
    assert results["m"]["param_value_accuracy"] == results["m"]["tool_selection_accuracy"]
    assert results["m simple"]["scored_tool_call_turns"] == sum(i.category == "simple" for i in chosen)
    assert "| Tool selection |" in proc.stdout and "| m simple |" in proc.stdout.splitlines()[0] + " |"
