"""BFCL through ``evaluate --bfcl``: every category's verdicts are exactly bfcl-eval's checker's (called
here directly as the oracle) for gold and perturbed predictions in both modes; the leaderboard's
columns follow its formulas; ESM still scores every possible answer 1.0. No model."""

import json
import subprocess
import sys
from collections import Counter

import pytest

from ttpa_jax.core.jsonl import DataError, write_jsonl
from ttpa_jax.evaluate import bfcl, bfcl_checker, leaderboard
from ttpa_jax.evaluate import evaluator as evaluate
from ttpa_jax.tools import esm
from ttpa_jax.tools.calls import render

LIMIT = 6  # entries per category; entry k gets perturbation VARIANTS[k % 6]
VARIANTS = ("gold", "wrong_name", "wrong_value", "missing_required", "extra_call", "no_call")
ENTRIES = bfcl.load_entries(["all"], limit=LIMIT)
PYTHON_SETS = ["simple_python", "multiple", "parallel", "parallel_multiple"]


def first_value(acceptable):
    """The first acceptable value; ``""`` first means the argument may be left out (None here)."""
    value = acceptable[0]
    return None if isinstance(value, str) and value == "" else resolve(value)


def resolve(value):
    """Nested answers: dict values (also in lists of dicts) are lists of acceptable values."""
    if isinstance(value, dict):
        out = {k: first_value(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not None}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [resolve(v) for v in value]
    return value


def gold_calls(entry):
    calls = []
    for answer in entry.ground_truth:
        (name, args), = answer.items()
        resolved = {k: first_value(v) for k, v in args.items()}
        calls.append({"name": name, "arguments": {k: v for k, v in resolved.items() if v is not None}})
    return calls


def some_call(entry):
    """A plausible call of the entry's first function (for the (ir)relevance sets)."""
    fn = entry.functions[0]
    props = fn["parameters"].get("properties", {})
    return [{"name": fn["name"], "arguments": {k: "x" for k in fn["parameters"].get("required", []) if k in props}}]


def perturbed(entry, variant):
    """Calls ``{"name", "arguments"}`` for one variant (None: no call at all)."""
    if entry.ground_truth is None:
        no_call = variant == "no_call" or (variant == "gold" and "irrelevance" in entry.category)
        return None if no_call else some_call(entry)
    calls = gold_calls(entry)
    first = calls[0]
    if variant == "wrong_name":
        calls[0] = {**first, "name": first["name"] + "_v2"}
    elif variant == "wrong_value" and first["arguments"]:
        key = next(iter(first["arguments"]))
        value = first["arguments"][key]
        changed = value + 1000 if isinstance(value, (int, float)) and not isinstance(value, bool) else "zz not an answer"
        calls[0] = {**first, "arguments": {**first["arguments"], key: changed}}
    elif variant == "missing_required":
        fn = next(f for f in entry.functions if f["name"] == first["name"])
        required = [k for k in fn["parameters"].get("required", []) if k in first["arguments"]]
        if required:
            calls[0] = {**first, "arguments": {k: v for k, v in first["arguments"].items() if k != required[0]}}
    elif variant == "extra_call":
        calls.append(dict(first))
    elif variant == "no_call":
        return None
    return calls


def python_call(call):
    args = ", ".join(f"{k}={v!r}" for k, v in call["arguments"].items())
    return f"{call['name']}({args})"


def java_like_call(call):
    """Java/JavaScript syntax: strings as double-quoted literals, the rest as written in the answer."""
    def literal(v):
        if isinstance(v, str):
            return json.dumps(v)
        return json.dumps(v) if isinstance(v, (bool, type(None))) else str(v)
    return f"{call['name']}(" + ", ".join(f"{k}={literal(v)}" for k, v in call["arguments"].items()) + ")"


def as_text(entry, calls, mode):
    if calls is None:
        return "I cannot answer that with the given functions."
    if mode == "fc":
        return render(calls, "qwen")
    write = java_like_call if entry.category in ("simple_java", "simple_javascript") else python_call
    return "[" + ", ".join(write(c) for c in calls) + "]"


def oracle(entry, text, mode):
    """The leaderboard's verdict, computed here with bfcl-eval's own functions."""
    from bfcl_eval.utils import is_empty_output, is_function_calling_format_output

    ast_checker = bfcl_checker.checker().ast_checker
    if mode == "fc":
        calls = bfcl_checker.decode_fc(text)
    else:
        try:
            calls = bfcl_checker.handler_utils().default_decode_ast_prompting(text, bfcl_checker.language(entry.category)[1])
        except Exception:
            calls = None
    if entry.ground_truth is None:
        made_call = calls is not None and not is_empty_output(calls)
        return made_call != ("irrelevance" in entry.category)
    if calls is None or not is_function_calling_format_output(calls):
        return False
    lang, _ = bfcl_checker.language(entry.category)
    return ast_checker(entry.functions, calls, entry.ground_truth, lang, entry.category, bfcl_checker.MODEL_NAME)["valid"]


def predictions_file(tmp_path, mode):
    lines, expected, variant_of = [], {}, {}
    per_category = Counter()
    for e in ENTRIES:
        variant = VARIANTS[per_category[e.category] % len(VARIANTS)]
        per_category[e.category] += 1
        text = as_text(e, perturbed(e, variant), mode)
        lines.append({"id": e.id, "prediction": text})
        expected[e.id] = oracle(e, text, mode)
        variant_of[e.id] = variant
    path = tmp_path / f"preds_{mode}.jsonl"
    write_jsonl(path, lines)
    return path, expected, variant_of


def test_every_category_is_loaded_with_its_limit():
    counts = Counter(e.category for e in ENTRIES)
    assert list(counts) == list(bfcl_checker.CATEGORIES) and set(counts.values()) == {LIMIT}
    assert [e.id for e in ENTRIES[:2]] == ["simple_python_0", "simple_python_1"]
    assert all((e.ground_truth is None) == bfcl_checker.is_relevance_category(e.category) for e in ENTRIES)
    assert bfcl.expand_categories(["simple", "multiple"]) == ["simple_python", "simple_java", "simple_javascript", "multiple"]
    with pytest.raises(DataError, match="unknown BFCL category 'simple_cobol'"):
        bfcl.expand_categories(["simple_cobol"])
    with pytest.raises(DataError, match="--limit must be at least 1"):
        bfcl.load_entries(["simple"], limit=0)


def test_model_input_has_language_hints_the_checker_input_not():
    java = next(e for e in ENTRIES if e.category == "simple_java")
    assert "Java 8 SDK syntax" in java.hinted[0]["description"]
    assert "Java 8 SDK syntax" not in java.functions[0]["description"]
    assert all(p["type"] == "string" for p in java.hinted[0]["parameters"]["properties"].values())
    messages, tools = bfcl.prompt_of(java, "fc")
    assert messages == java.question and tools[0]["function"]["name"] == java.functions[0]["name"]
    messages, tools = bfcl.prompt_of(java, "prompt")
    assert tools == [] and messages[0]["role"] == "system" and messages[1:] == java.question
    assert "[func_name1(params_name1=params_value1" in messages[0]["content"]
    assert json.dumps(java.hinted, indent=4) in messages[0]["content"]


@pytest.mark.parametrize("mode", ["fc", "prompt"])
def test_verdicts_are_the_checkers_for_every_category(tmp_path, mode):
    path, expected, variant_of = predictions_file(tmp_path, mode)
    cfg = evaluate.EvalConfig(bfcl="all", limit=LIMIT, predictions=path, bfcl_mode=mode, name="m")
    try:
        result = evaluate.run(cfg)
    except bfcl_checker.BFCLNotInstalled as e:  # Java/JavaScript prompt-mode decoding needs tree-sitter
        assert mode == "prompt" and "pip install tree_sitter==0.21.3" in str(e)
        return
    rows = {r["id"]: r for r in result["entries"]}
    assert set(rows) == {e.id for e in ENTRIES} and result["missing_predictions"] == 0
    assert {i: r["valid"] for i, r in rows.items()} == expected
    by_category = Counter()
    for e in ENTRIES:
        row = rows[e.id]
        assert row["category"] == e.category and row["prediction"].startswith(("I cannot", "<tool_call>", "["))
        assert row["valid"] == (row["error"] == [] or row["error_type"] == "simple_function_checker:unclear")
        by_category[e.category] += row["valid"]
        variant = variant_of[e.id]
        if e.ground_truth is not None and variant in ("wrong_name", "extra_call", "no_call"):
            assert not row["valid"], (e.id, variant)
        if e.ground_truth is None and variant == "no_call":
            assert row["valid"] == ("irrelevance" in e.category)
    for cat, score in result["categories"].items():
        assert score["correct_count"] == by_category[cat] and score["total_count"] == LIMIT
    # both outcomes in every category: gold is right (but fc-mode JavaScript, whose JSON values are not
    # the JavaScript strings the checker wants) and some perturbation is wrong
    gold_right = {e.category for e in ENTRIES if variant_of[e.id] == "gold" and rows[e.id]["valid"]}
    assert gold_right == set(bfcl_checker.CATEGORIES) - ({"simple_javascript"} if mode == "fc" else set())
    assert {e.category for e in ENTRIES if not rows[e.id]["valid"]} == set(bfcl_checker.CATEGORIES)
    assert result["leaderboard"]["Python Simple AST"]["accuracy"] == result["categories"]["simple_python"]["accuracy"]
    esm_rows = result["esm"]["m"]["per_turn"]
    assert {r["id"] for r in esm_rows} == {e.id for e in ENTRIES if e.category != "live_relevance"}
    gold_row = next(r for r in esm_rows if r["id"] == "simple_python_0")
    assert gold_row["score"] == 1.0
    if mode == "fc":  # ESM reads the same text; in prompt mode, the calls BFCL's parser decoded
        assert gold_row["prediction"] == rows["simple_python_0"]["prediction"]
    else:
        assert gold_row["prediction"] == [{"name": n, "arguments": a} for c in rows["simple_python_0"]["decoded"]
                                          for n, a in c.items()]


def test_prompt_mode_decodes_python_calls_and_refuses_to_run_code():
    entry = next(e for e in ENTRIES if e.id == "simple_python_0")
    decoded, verdict = bfcl_checker.decode_and_judge(entry.category, entry.functions, entry.ground_truth,
                                                     "[calculate_triangle_area(base=10, height=5)]", "prompt")
    assert decoded == [{"calculate_triangle_area": {"base": 10, "height": 5}}] and verdict.valid
    decoded, verdict = bfcl_checker.decode_and_judge(entry.category, entry.functions, entry.ground_truth,
                                                     "[calculate_triangle_area(base=2*5, height=5)]", "prompt")
    assert verdict.valid  # BFCL evaluates plain arithmetic
    decoded, verdict = bfcl_checker.decode_and_judge(
        entry.category, entry.functions, entry.ground_truth,
        "[calculate_triangle_area(base=1+len(open('/etc/hostname').read()), height=5)]", "prompt")
    assert decoded is None and verdict.error_type == "ast_decoder:decoder_failed"
    assert "refused to evaluate" in verdict.error[0]
    # where the checker itself raises (here: a schema item type it has no converter for), the entry is wrong
    odd = [{"name": "f", "parameters": {"type": "dict", "required": ["a"],
                                        "properties": {"a": {"type": "ArrayList", "items": {"type": "zzz"}}}}}]
    verdict = bfcl_checker.judge("simple_java", odd, [{"f": {"a": [["x"]]}}], [{"f": {"a": "[1"}}])
    assert not verdict.valid and verdict.error_type == "checker_error" and "KeyError" in verdict.error[0]


def test_leaderboard_columns_follow_its_formulas():
    table = {"simple_python": (0.9, 400), "simple_java": (0.6, 100), "simple_javascript": (0.3, 50),
             "multiple": (0.8, 200), "parallel": (0.7, 200), "parallel_multiple": (0.5, 200),
             "irrelevance": (0.4, 240), "live_simple": (0.75, 258), "live_multiple": (0.5, 1053),
             "live_parallel": (0.25, 16), "live_parallel_multiple": (0.125, 24), "live_irrelevance": (0.6, 884),
             "live_relevance": (1.0, 16)}
    cols = bfcl_checker.leaderboard({c: {"accuracy": a, "total_count": n} for c, (a, n) in table.items()})
    shown = {k: v["display_accuracy"] for k, v in cols.items()}
    simple = (0.9 + 0.6 + 0.3) / 3
    assert shown["Simple AST"] == pytest.approx(simple)
    assert shown["Non-Live AST Summary"] == pytest.approx((simple + 0.8 + 0.7 + 0.5) / 4)
    assert shown["Non-Live Overall Acc"] == shown["Non-Live AST Summary"]
    live = (0.75 * 258 + 0.5 * 1053 + 0.25 * 16 + 0.125 * 24) / (258 + 1053 + 16 + 24)
    assert shown["Live AST Summary"] == pytest.approx(live) and cols["Live AST Summary"]["total_count"] == 1351
    assert shown["Irrelevance Detection"] == 0.4 and shown["Live Relevance Detection"] == 1.0
    assert shown["Total Irrelevance"] == pytest.approx((0.4 + 0.6) / 2)
    partial = bfcl_checker.leaderboard({"simple_python": {"accuracy": 0.9, "total_count": 10},
                                        "multiple": {"accuracy": 0.5, "total_count": 10}})
    assert partial["Simple AST"]["display_accuracy"] is None  # N/A: java and javascript not run
    assert partial["Non-Live AST Summary"]["display_accuracy"] is None
    assert partial["Non-Live Overall Acc"]["display_accuracy"] == pytest.approx((0.9 / 3 + 0.5) / 4)
    assert partial["Python Simple AST"]["display_accuracy"] == 0.9
    assert bfcl_checker.category_scores([("multiple", True), ("multiple", False), ("parallel", True)]) == {
        "multiple": {"accuracy": 0.5, "correct_count": 1, "total_count": 2},
        "parallel": {"accuracy": 1.0, "correct_count": 1, "total_count": 1}}


def test_auto_mode_reads_the_chat_template():
    assert leaderboard.template_uses_tools("{% if tools %}{{ tools | tojson }}{% endif %}")
    assert not leaderboard.template_uses_tools("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert leaderboard.template_uses_tools({"default": "x", "tool_use": "{{ tools }}"})
    assert leaderboard.resolve_mode("prompt", None) == "prompt" and leaderboard.resolve_mode("auto", None) == "fc"


def test_cli_out_records_verdicts_predictions_and_errors(tmp_path):
    path, expected, _ = predictions_file(tmp_path, "fc")
    out = tmp_path / "bfcl.json"
    cmd = [sys.executable, "-m", "ttpa_jax.evaluate", "--bfcl", "simple_python,irrelevance", "--limit", "3",
           "--predictions", str(path), "--out", str(out), "--name", "m", "--bfcl-mode", "fc"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    rows = {r["id"]: r for r in result["entries"]}
    assert set(rows) == {f"simple_python_{i}" for i in range(3)} | {f"irrelevance_{i}" for i in range(3)}
    assert rows["simple_python_1"]["error_type"] == "simple_function_checker:wrong_func_name"
    assert "not found in model output" in rows["simple_python_1"]["error"][0]
    assert rows["simple_python_1"]["prediction"].startswith("<tool_call>") and rows["simple_python_1"]["decoded"]
    assert rows["irrelevance_1"]["error_type"] == "irrelevance_error:decoder_success"
    assert all(rows[i]["valid"] == expected[i] for i in rows)
    assert "| simple_python |" in proc.stdout and "| Python Simple AST |" in proc.stdout
    assert "| Simple AST | N/A |" in proc.stdout and "| Irrelevance Detection |" in proc.stdout


def test_possible_answers_score_one_with_esm():
    failures = []
    for item in bfcl.load_items(PYTHON_SETS, limit=50):
        r = esm.score(render(gold_from_item(item)), item.gold_calls, item.tools)
        if not (r.exact and r.score == 1.0):
            failures.append((item.id, r.errors, r.messages))
    assert failures == []


def gold_from_item(item):
    calls = []
    for call in item.gold_calls:
        resolved = {k: first_value(v) for k, v in call["arguments"].items()}
        calls.append({"name": call["name"], "arguments": {k: v for k, v in resolved.items() if v is not None}})
    return calls


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


def test_missing_package_error():
    with pytest.raises(bfcl.BFCLNotInstalled, match="pip install --no-deps bfcl-eval"):
        bfcl.data_dir("ttpa_jax_no_such_package")


def test_model_path_decodes_in_both_modes(tiny_model_dir):
    """``--model``: prompts built per mode, decoded, and the decoded text judged like any prediction."""
    for mode in ("fc", "prompt"):
        result = leaderboard.run_bfcl(["simple_python", "irrelevance"], model=tiny_model_dir, mode=mode, limit=1,
                                      max_new_tokens=4, batch_size=2, progress=False)
        assert result["mode"] == mode and result["prompts_too_long"] == []
        rows = {r["id"]: r for r in result["entries"]}
        assert set(rows) == {"simple_python_0", "irrelevance_0"}
        for e in bfcl.load_entries(["simple_python", "irrelevance"], limit=1):
            row = rows[e.id]
            assert isinstance(row["prediction"], str) and row["valid"] == oracle(e, row["prediction"], mode)
    assert leaderboard.resolve_mode("auto", tiny_model_dir) == "fc"  # its template renders tools
