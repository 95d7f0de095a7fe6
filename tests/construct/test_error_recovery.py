"""Error-recovery episodes: a call first made with a wrong value, the tool's error, then the correction."""

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from construct_configs import construct_config

from ttpa_jax.construct.build import ConfigError, construct
from ttpa_jax.construct.checks import check_record
from ttpa_jax.core.conversation import mae_masked_messages, normalize_record
from ttpa_jax.core.jsonl import read_jsonl

REPO = Path(__file__).resolve().parents[2]
NUM = {"reversed": 60, "forward": 30}
# sha256 of these runs (seed 3, NUM records, error_recovery 0) as written by the code before error
# recovery existed: a fraction of 0 must not change a byte. An intended change to the template
# generator, the bundled tools or the record format changes them; update them with it.
PINNED = {"reversed": "906bef8e9172751e862d314363cc4efc2a781b710eee4fd68bdd5f11db08770f",
          "forward": "885e5d0d491f43cf52c759be04c7cc72b75687a5f95e5afe98c837cdef0d0927"}


def _cfg(out, **kw):
    return construct_config(out, progress=False, **{"seed": 3, **kw})


@pytest.fixture(scope="module", params=["reversed", "forward"])
def runs(request, tmp_path_factory):
    """(mode, file made without recovery, file made with 0.5, the summary of the latter)."""
    mode = request.param
    folder = tmp_path_factory.mktemp(mode)
    construct(_cfg(folder / "plain.jsonl", num=NUM[mode], mode=mode))
    summary = construct(_cfg(folder / "mixed.jsonl", num=NUM[mode], mode=mode, error_recovery=0.5))
    return mode, folder / "plain.jsonl", folder / "mixed.jsonl", summary


def _calls(record):
    """(message index, name, arguments, parsed result) of every call, in order."""
    messages = record["messages"]
    return [(i, m["tool_calls"][0]["function"]["name"], m["tool_calls"][0]["function"]["arguments"],
             json.loads(messages[i + 1]["content"])) for i, m in enumerate(messages) if m.get("tool_calls")]


def _without_failed_calls(record):
    """The messages with the failed calls and their results removed and the call ids renumbered."""
    failed_ids = {f"call_{k}" for k in record["meta"].get("failed_calls", [])}
    kept = [copy.deepcopy(m) for m in record["messages"]
            if not (m.get("tool_calls") and m["tool_calls"][0]["id"] in failed_ids)
            and m.get("tool_call_id") not in failed_ids]
    renumber = {m["tool_calls"][0]["id"]: f"call_{n}" for n, m in enumerate(m for m in kept if m.get("tool_calls"))}
    for m in kept:
        if m.get("tool_calls"):
            m["tool_calls"][0]["id"] = renumber[m["tool_calls"][0]["id"]]
        if "tool_call_id" in m:
            m["tool_call_id"] = renumber[m["tool_call_id"]]
    return kept


def test_no_recovery_gives_the_bytes_of_the_code_before_it(runs):
    mode, plain, _, _ = runs
    assert hashlib.sha256(plain.read_bytes()).hexdigest() == PINNED[mode]


def test_about_half_of_the_records_fail_a_call_and_correct_it(runs):
    mode, _, mixed, summary = runs
    records = read_jsonl(mixed)
    recovered = [r for r in records if r["meta"].get("failed_calls")]
    assert 0.3 <= len(recovered) / len(records) <= 0.7
    assert summary.recovered == len(recovered) and summary.made == len(records) == NUM[mode]
    for r in records:
        normalize_record(r, r["id"])
        assert check_record(r, 2, 7) == [], r["id"]
        assert r["meta"]["error_recovery"] == 0.5 and r["meta"]["num_calls"] == len(_calls(r))
    for r in recovered:
        calls = _calls(r)
        failed = r["meta"]["failed_calls"]
        for k in failed:
            _, name, args, result = calls[k]
            _, next_name, next_args, next_result = calls[k + 1]
            assert set(result) == {"error"} and isinstance(result["error"], str)
            assert next_name == name and next_args != args and "error" not in next_result
        assert mae_masked_messages(r["messages"]) == {calls[k][0] for k in failed}
    for r in records:
        if r not in recovered:
            assert "failed_calls" not in r["meta"] and mae_masked_messages(r["messages"]) == set()


def test_the_rest_of_the_record_is_what_it_is_without_recovery(runs):
    _, plain, mixed, _ = runs
    for before, after in zip(read_jsonl(plain), read_jsonl(mixed), strict=True):
        assert after["id"] == before["id"]
        assert _without_failed_calls(after) == before["messages"]
        assert mae_masked_messages(before["messages"]) == set()
        changed = {"error_recovery", "failed_calls", "num_calls"}
        assert {k: v for k, v in after["meta"].items() if k not in changed} == \
            {k: v for k, v in before["meta"].items() if k not in changed}


def test_same_seed_same_bytes_with_recovery(runs, tmp_path):
    mode, _, mixed, _ = runs
    again = tmp_path / "again.jsonl"
    construct(_cfg(again, num=NUM[mode], mode=mode, error_recovery=0.5))
    assert again.read_bytes() == mixed.read_bytes()


def test_held_out_records_never_fail_a_call(tmp_path):
    out = tmp_path / "sft.jsonl"
    summary = construct(_cfg(out, num=40, split=0.25, error_recovery=1.0))
    train, test = read_jsonl(out), read_jsonl(tmp_path / "sft.test.jsonl")
    assert (len(train), len(test)) == (30, 10) and summary.recovered == 30
    assert all(r["meta"]["failed_calls"] for r in train)
    assert not any("failed_calls" in r["meta"] for r in test)


def test_a_run_continues_only_with_the_same_fraction(runs, tmp_path):
    _, plain, mixed, _ = runs
    for source, other in ((plain, 0.5), (mixed, 0.0), (mixed, 0.25)):
        out = tmp_path / "sft.jsonl"
        out.write_bytes(source.read_bytes().splitlines(keepends=True)[0])
        with pytest.raises(ConfigError, match="error_recovery"):
            construct(_cfg(out, num=5, error_recovery=other))


def test_cli_flag_and_summary(tmp_path):
    out = tmp_path / "sft.jsonl"
    run = subprocess.run([sys.executable, "-m", "ttpa_jax.construct", "--out", str(out), "--num", "16",
                          "--error-recovery", "0.5", "--no-progress"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    recovered = sum(bool(r["meta"].get("failed_calls")) for r in read_jsonl(out))
    assert 0 < recovered < 16
    assert f"error recovery: {recovered} of the records made" in run.stderr
    bad = subprocess.run([sys.executable, "-m", "ttpa_jax.construct", "--out", str(tmp_path / "x.jsonl"),
                          "--error-recovery", "1.5"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --error-recovery must be in [0, 1]"
