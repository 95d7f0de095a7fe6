"""``python -m ttpa_jax.sample`` end to end on a tiny model directory, both modes, and the pair
records built from scored candidates."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ttpa_jax
from ttpa_jax.tools import esm
from ttpa_jax.core.conversation import normalize_preference
from ttpa_jax.core.jsonl import DataError
from ttpa_jax.text.prompts import load_tokenizer
from ttpa_jax.sample.sampler import Candidate, Prompt, SampleConfig, pair_records, sample
from ttpa_jax.tools.calls import render

from tool_records import RECORDS, TOOLS, build_tiny_model_dir, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
N_TOOL_TURNS = 3  # r1 has one tool-call turn, r2 two, r3 none


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    build_tiny_model_dir(d / "model")
    return d / "model", write_jsonl(d / "sft.jsonl", RECORDS)


def read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def check_well_formed(records):
    for i, r in enumerate(records):
        normalize_preference(r, f"record {i}")  # raises on anything malformed
        assert set(r) == {"prompt", "chosen", "rejected", "tools", "meta"} and r["tools"] == TOOLS
        src = next(x for x in RECORDS if x["id"] == r["meta"]["id"])
        assert r["prompt"][-1]["role"] in ("user", "tool")
        assert [m["content"] for m in r["prompt"]] == [m["content"] for m in src["messages"][: r["meta"]["turn"]]]
        assert r["meta"]["chosen_score"] - r["meta"]["rejected_score"] >= 0.1 - 1e-9


def test_sample_cli_tps(tiny, tmp_path):
    model_dir, data = tiny
    out = tmp_path / "pairs.jsonl"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "ttpa_jax.sample", "--model", str(model_dir), "--data", str(data), "--out", str(out),
         "--max-new-tokens", "12", "--batch-size", "2", "--epsilon", "0.5", "--top-k", "3",
         "--max-branch-points", "2", "--no-progress"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout.splitlines()
    # Random weights: near-uniform distributions, so every prompt gets its 2 branch points x 2 alternatives.
    assert summary[0].startswith(f"3 records, {N_TOOL_TURNS} tool-call prompts, 6 branch points, 12 branches, "
                                 f"15 candidates, ")
    assert any(line.split()[0] == "format" for line in summary[2:])
    records = read(out)
    assert f", {len(records)} pairs -> " in summary[0]
    check_well_formed(records)
    tok = load_tokenizer(model_dir)
    greedy = {}
    for r in records:
        m = r["meta"]
        assert m["mode"] == "tps" and m["chosen_source"] == "gold"  # garbage output: the gold call is chosen
        assert r["chosen"][0]["tool_calls"]
        if m["rejected_source"] == "greedy":
            greedy[m["id"], m["turn"]] = m["rejected_token_ids"]
    assert len(greedy) == N_TOOL_TURNS
    branches = [r for r in records if r["meta"]["rejected_source"] == "branch"]
    assert branches
    for r in branches:
        m, b = r["meta"], r["meta"]["rejected_branch"]
        ids = m["rejected_token_ids"]
        assert m["branch_position"] == b["position"] and m["gap"] == b["gap"] < 0.5
        assert ids[: b["position"]] == greedy[m["id"], m["turn"]][: b["position"]]  # the shared prefix
        assert ids[b["position"]] == b["token_id"] and b["rank"] in (1, 2)
        if not r["rejected"][0].get("tool_calls"):
            assert r["rejected"][0]["content"] == tok.decode(ids, skip_special_tokens=True)


def test_sample_trajectory_mode_python_entry(tiny, tmp_path):
    model_dir, data = tiny
    model, tok = ttpa_jax.load_pretrained(model_dir), load_tokenizer(model_dir)
    cfg = SampleConfig(model=model_dir, data=data, out=tmp_path / "a.jsonl", mode="trajectory", num_samples=3,
                       max_new_tokens=8, batch_size=4, temperature=1.0, seed=1, progress=False)
    s = sample(cfg, model=model, tokenizer=tok)
    assert (s["records"], s["prompts"], s["candidates"], s["branches"], s["branch_points"]) == (3, N_TOOL_TURNS, 9, 0, 0)
    assert s["errors"]["format"] == 9 and s["pairs"] == len(read(cfg.out)) > 0
    records = read(cfg.out)
    check_well_formed(records)
    assert all(r["meta"]["mode"] == "trajectory" and r["meta"]["branch_position"] is None for r in records)
    assert {r["meta"]["rejected_source"] for r in records} == {"sample"}
    again = SampleConfig(**{**cfg.__dict__, "out": tmp_path / "b.jsonl"})
    sample(again, model=model, tokenizer=tok)
    assert (tmp_path / "b.jsonl").read_text() == cfg.out.read_text()  # same seed, same samples
    with pytest.raises(DataError, match="unknown error type 'bogus'"):
        sample(SampleConfig(**{**cfg.__dict__, "weights": {"bogus": 1.0}}), model=model, tokenizer=tok)


def test_pair_records_from_scored_candidates():
    gold = [{"name": "get_weather", "arguments": {"city": "Lyon", "unit": "celsius"}}]
    prompt = Prompt("r1", 1, RECORDS[0]["messages"][:1], TOOLS, gold, [5, 6, 7])
    good = render(gold, "qwen")
    wrong = render([{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}], "qwen")
    cands = [Candidate(good, [10, 11, 12, 13], "greedy"),
             Candidate(wrong, [10, 11, 20, 21], "branch", {"position": 2, "gap": 0.03, "token_id": 20, "rank": 1, "prob": 0.4}),
             Candidate("no call here", [30], "branch", {"position": 0, "gap": 0.01, "token_id": 30, "rank": 1, "prob": 0.2})]
    scores = [esm.score(c.text, gold, TOOLS) for c in cands]
    cfg = SampleConfig(model=Path("m"), data=Path("d"), out=Path("o"), margin=0.1)
    records = pair_records(prompt, cands, scores, cfg, "qwen")
    assert len(records) == 2
    first, second = records
    assert first["chosen"][0]["tool_calls"][0]["function"]["arguments"] == {"city": "Lyon", "unit": "celsius"}
    assert first["rejected"][0]["tool_calls"][0]["function"]["arguments"]["city"] == "Paris"
    assert first["meta"]["chosen_source"] == "greedy" and first["meta"]["rejected_errors"]["param_value"] == 1
    assert first["meta"]["branch_position"] == 2 and first["meta"]["shared_prefix_tokens"] == 2
    assert first["meta"]["chosen_score"] == 1.0 and first["meta"]["rejected_score"] < 1.0
    assert second["rejected"][0] == {"role": "assistant", "content": "no call here"}  # raw text kept
    assert second["meta"]["rejected_errors"]["format"] == 1 and second["meta"]["shared_prefix_tokens"] == 0


def test_a_call_answered_by_an_error_is_not_sampled(tiny, tmp_path):
    from tool_records import _call

    from ttpa_jax.sample.sampler import read_prompts

    model_dir, _ = tiny
    user, call, result, answer = RECORDS[0]["messages"]
    failed = {"role": "assistant", "content": "", "tool_calls": [_call("call_9", "get_weather", {"city": "Lyom"})]}
    error = {"role": "tool", "tool_call_id": "call_9", "name": "get_weather", "content": "{\"error\": \"unknown city\"}"}
    recovered = {"id": "r4", "tools": TOOLS, "messages": [user, failed, error, call, result, answer]}
    data = write_jsonl(tmp_path / "sft.jsonl", [*RECORDS, recovered])
    n_records, prompts = read_prompts(data, load_tokenizer(model_dir), 12, 4096)
    assert n_records == 4 and len(prompts) == N_TOOL_TURNS + 1
    [prompt] = [p for p in prompts if p.record_id == "r4"]
    assert prompt.turn == 3 and prompt.gold == [{"name": "get_weather", "arguments": {"city": "Lyon", "unit": "celsius"}}]
