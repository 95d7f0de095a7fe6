"""Dataset construction with the template generator: determinism, validity, split, resume, CLI."""

import ast
import dataclasses
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from construct_configs import construct_config

from ttpa_jax.construct.build import ConfigError, ConstructConfig, construct, held_out_path
from ttpa_jax.construct.checks import check_record, mentions, parse_turns
from ttpa_jax.core.jsonl import read_jsonl

REPO = Path(__file__).resolve().parents[2]


def _cfg(out, **kw):
    return construct_config(out, progress=False, **{"num": 40, "seed": 5, **kw})


def _run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "ttpa_jax.construct", *args], capture_output=True, text=True,
                          cwd=REPO, **kw)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("made") / "sft.jsonl"
    summary = construct(_cfg(out, num=80))
    return out, summary, read_jsonl(out)


def test_template_output_is_valid_sft_data(made):
    out, summary, records = made
    assert summary.made == len(records) == 80 and summary.given_up == 0
    assert [r["id"] for r in records] == [f"rev-s5-{i:06d}" for i in range(80)]
    for r in records:
        assert check_record(r, 2, 7) == [], r["id"]
        assert r["messages"][0]["role"] == "system" and r["messages"][1]["role"] == "user"
        used = set(r["meta"]["tools_used"])
        shown = [t["function"]["name"] for t in r["tools"]]
        assert used <= set(shown) and r["meta"]["distractors"] and 2 <= r["meta"]["num_calls"] <= 7
        for m in r["messages"]:
            if m.get("tool_calls"):
                assert len(m["tool_calls"]) == 1 and isinstance(m["tool_calls"][0]["function"]["arguments"], dict)
            if m["role"] == "tool":
                json.loads(m["content"])
        assert r["meta"]["scenario"] and r["meta"]["generator"] == "template"
    assert any(r["meta"]["turns"] == 2 for r in records), "some records have a follow-up turn"
    assert len({r["meta"]["num_calls"] for r in records}) >= 4


def test_some_calls_take_values_from_earlier_results(made):
    chained = 0
    for r in made[2]:
        turns = parse_turns(r["messages"])
        queries, seen = "", ""
        for turn in turns:
            queries += turn.query
            for step in turn.steps:
                for v in step.arguments.values():
                    if isinstance(v, str) and not mentions(queries, v) and mentions(seen, v):
                        chained += 1
                seen += json.dumps(step.result)
    assert chained >= 5


def test_same_seed_same_bytes_other_seed_other_data(made, tmp_path):
    out, _, _ = made
    again = tmp_path / "again.jsonl"
    construct(_cfg(again, num=80))
    assert again.read_bytes() == out.read_bytes()
    other = tmp_path / "other.jsonl"
    construct(_cfg(other, num=10, seed=6))
    assert [r["messages"] for r in read_jsonl(other)] != [r["messages"] for r in read_jsonl(out)[:10]]


def test_forward_mode(tmp_path):
    summary = construct(_cfg(tmp_path / "fwd.jsonl", num=12, mode="forward"))
    records = read_jsonl(tmp_path / "fwd.jsonl")
    assert summary.made + summary.given_up == 12 and len(records) == summary.made > 0
    assert all(r["id"].startswith("fwd-s5-") and r["meta"]["mode"] == "forward" for r in records)
    assert all(check_record(r, 2, 7) == [] for r in records)


def test_split_gives_disjoint_tool_sets(tmp_path):
    out = tmp_path / "data.jsonl"
    summary = construct(_cfg(out, num=30, split=0.2))
    test_out = tmp_path / "data.test.jsonl"
    assert held_out_path(out) == test_out and held_out_path(tmp_path / "data") == tmp_path / "data.test"
    train, test = read_jsonl(out), read_jsonl(test_out)
    assert (len(train), len(test)) == (24, 6) and summary.made == 30
    train_tools = {t["function"]["name"] for r in train for t in r["tools"]}
    test_tools = {t["function"]["name"] for r in test for t in r["tools"]}
    assert train_tools and test_tools and not train_tools & test_tools
    assert all(r["meta"]["split"] == "test" and "-test-" in r["id"] for r in test)
    assert all(check_record(r, 2, 7) == [] for r in train + test)


def test_resume_drops_a_torn_line_and_skips_present_ids(made, tmp_path):
    reference, _, _ = made
    out = tmp_path / "sft.jsonl"
    lines = reference.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:30]) + lines[30][: len(lines[30]) // 2])  # killed mid-write
    summary = construct(_cfg(out, num=80))
    assert summary.already_present == 30 and summary.made == 50
    assert out.read_bytes() == reference.read_bytes()
    # Nothing left to do: a rerun adds nothing.
    again = construct(_cfg(out, num=80))
    assert (again.made, again.already_present) == (0, 80) and out.read_bytes() == reference.read_bytes()


def test_resume_refuses_a_file_made_with_other_settings(made, tmp_path):
    out = tmp_path / "sft.jsonl"
    out.write_bytes(made[0].read_bytes().splitlines(keepends=True)[0])
    with pytest.raises(ConfigError, match="seed"):
        construct(_cfg(out, seed=6))


def test_killed_run_continues_without_duplicates_or_losses(tmp_path):
    out = tmp_path / "sft.jsonl"
    args = ["--out", str(out), "--num", "800", "--seed", "11", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "ttpa_jax.construct", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 20:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run was killed before it finished"
    written = out.read_bytes().count(b"\n")
    assert 20 <= written < 800
    rerun = _run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    records = read_jsonl(out)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == 800
    assert set(ids) == {f"rev-s11-{i:06d}" for i in range(800)}
    assert all(check_record(r, 2, 7) == [] for r in records)
    assert "already present" in rerun.stderr


def _one_line_error(proc):
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    return lines[0]


def test_cli_errors_are_one_clear_message(tmp_path):
    missing = tmp_path / "nope.json"
    assert str(missing) in _one_line_error(_run_cli("--tools", str(missing), "--out", str(tmp_path / "a.jsonl")))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"type": "function", "function": {
        "name": "x", "parameters": {"type": "object", "properties": {"a": {"type": 3}}}}}]))
    assert "not valid JSON Schema" in _one_line_error(_run_cli("--tools", str(bad), "--out", str(tmp_path / "a.jsonl")))
    own = tmp_path / "own.json"
    own.write_text(json.dumps([{"type": "function", "function": {
        "name": f"tool_{i}", "parameters": {"type": "object", "properties": {}}}} for i in range(3)]))
    message = _one_line_error(_run_cli("--tools", str(own), "--out", str(tmp_path / "a.jsonl")))
    assert "tool_0" in message and "--generator openai" in message
    assert "--min-calls" in _one_line_error(_run_cli("--min-calls", "5", "--max-calls", "2", "--out",
                                                     str(tmp_path / "a.jsonl")))
    assert not (tmp_path / "a.jsonl").exists()


def _field_docs(cls):
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    return {a.target.id: " ".join(b.value.value.split()) for a, b in zip(body, body[1:])
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr)}


def test_help_documents_every_field():
    proc = _run_cli("--help", env={**os.environ, "COLUMNS": "400"})
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    docs = _field_docs(ConstructConfig)
    assert set(docs) == {f.name for f in dataclasses.fields(ConstructConfig)}
    nested = {f.name: f.default for f in dataclasses.fields(ConstructConfig) if dataclasses.is_dataclass(f.default)}
    assert set(nested) == {"episode", "openai"}  # their fields are flags without a prefix
    for name in nested:
        docs.pop(name)
        sub = _field_docs(type(nested[name]))
        assert set(sub) == {f.name for f in dataclasses.fields(nested[name])}
        docs.update(sub)
    for name, doc in docs.items():
        assert "--" + name.replace("_", "-") in text, name
        first_words = " ".join(doc.split()[:5]).replace("`", "")
        assert first_words in text.replace("`", ""), (name, first_words)


def test_summary_reports_everything(made):
    _, summary, _ = made
    text = summary.format()
    assert "80 made" in text and "rejected: 0" in text
    as_dict = summary.to_dict()
    assert as_dict["made"] == 80 and as_dict["rejected"] == {} and as_dict["failures"] == {}
