"""``python -m ttpa_jax.sample`` end to end on a tiny model directory, both modes; the token ids DPO
receives for TPS pairs; answer-turn pairs, gold-chosen marking, the audit and span-restricted branching."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tool_records import RECORDS, TOOLS, build_tiny_model_dir, write_jsonl

import ttpa_jax
from ttpa_jax.core.conversation import normalize_preference
from ttpa_jax.core.jsonl import DataError
from ttpa_jax.decode.settings import Decoding, TPSConfig
from ttpa_jax.sample import sampler
from ttpa_jax.sample.audit import audit_path
from ttpa_jax.sample.sampler import SampleConfig, sample
from ttpa_jax.text.prompts import load_tokenizer
from ttpa_jax.tools import esm

ROOT = Path(__file__).resolve().parents[2]
N_TOOL_TURNS = 3  # r1 has one tool-call turn, r2 two, r3 none
N_ANSWER_TURNS = 2  # r1's and r2's final answers use the tool results; r3's "Hi!" follows no tool


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    model_dir = build_tiny_model_dir(d / "model")
    return model_dir, write_jsonl(d / "sft.jsonl", RECORDS), ttpa_jax.load_pretrained(model_dir), load_tokenizer(model_dir)


def read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def check_well_formed(records):
    for i, r in enumerate(records):
        normalize_preference(r, f"record {i}")  # raises on anything malformed
        assert set(r) == {"prompt", "chosen", "rejected", "tools", "prompt_ids", "chosen_ids", "rejected_ids",
                          "chosen_source", "meta"} and r["tools"] == TOOLS
        src = next(x for x in RECORDS if x["id"] == r["meta"]["id"])
        assert [m["content"] for m in r["prompt"]] == [m["content"] for m in src["messages"][: r["meta"]["turn"]]]
        assert r["meta"]["chosen_score"] - r["meta"]["rejected_score"] >= 0.1 - 1e-9
        assert r["chosen_ids"] != r["rejected_ids"]  # no identical pairs


def test_sample_cli_tps_answer_turns_gold_and_audit(tiny, tmp_path):
    model_dir, data, _, tok = tiny
    out = tmp_path / "pairs.jsonl"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "ttpa_jax.sample", "--model", str(model_dir), "--data", str(data), "--out", str(out),
         "--decoding.max-new-tokens", "12", "--decoding.batch-size", "2", "--tps.epsilon", "0.5", "--tps.top-k", "3",
         "--tps.max-branch-points", "2", "--tps.min-alt-prob", "0", "--no-progress"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout.splitlines()
    # Random weights write no tool call, so branching inside calls (the default) finds no step on the
    # tool-call turns; the answer turns branch anywhere but EOS: 2 points x 2 alternatives each.
    assert summary[0].startswith(f"3 records, {N_TOOL_TURNS} tool-call prompts, {N_ANSWER_TURNS} answer prompts, "
                                 "4 branch points, 8 branches, 13 candidates, ")
    records = read(out)
    check_well_formed(records)
    audit = json.loads(audit_path(out).read_text())
    assert audit_path(out).name == "pairs.audit.json" and f"audit -> {audit_path(out)}" in proc.stdout
    assert "pairs by kind: gold_chosen" in proc.stdout and "prompts without a pair:" in proc.stdout
    # Every candidate is garbage (score 0 < --gold-below 0.8): the gold completion is chosen, marked.
    assert all(r["chosen_source"] == "gold" and r["meta"]["pair_kind"] == "gold_chosen" for r in records)
    assert audit["pair_kinds"] == {"sampled_chosen": 0, "gold_anchored": 0, "gold_chosen": len(records)}
    assert audit["chosen_source"] == {"gold": len(records)}
    assert audit["branch_locations"] == {"answer": 4}  # never outside a call on a tool-call turn
    assert sum(audit["score_gaps"]["histogram"].values()) == len(records)
    answers = [r for r in records if r["meta"]["turn_kind"] == "answer"]
    assert len(answers) == audit["pairs_by_turn_kind"]["answer"] > 0
    for r in answers:  # the reference answer is chosen, rendered after the prompt as DPO renders it
        assert r["chosen"][0]["content"] == next(x for x in RECORDS if x["id"] == r["meta"]["id"])["messages"][
            r["meta"]["turn"]]["content"]
        assert r["meta"]["rejected_errors"]["missed_values"] >= 1
    for r in records:
        if r["meta"]["turn_kind"] == "tool_call":
            assert r["chosen"][0]["tool_calls"] and r["meta"]["rejected_kind"] == "greedy"
        assert r["rejected"][0]["content"] == tok.decode(r["rejected_ids"], skip_special_tokens=True)


def _stub_score(text, prompt, weights, format):
    """A stand-in scorer with spread-out scores, so sampled candidates beat each other by the margin."""
    return esm.ScoreResult(score=(sum(map(ord, text)) % 11) / 10, errors={"format": 0})


def test_tps_pairs_share_every_token_before_the_branch_in_the_dpo_batch(tiny, tmp_path, monkeypatch):
    """The done-when check: in the token ids the DPO step receives (records tokenized by
    ``prepare``, batched by the trainer's ``Loader``), each TPS pair is equal before its branch
    token and differs at it."""
    from ttpa_jax.train.dataset import prepare
    from ttpa_jax.train.loader import Loader

    model_dir, data, model, tok = tiny
    monkeypatch.setattr(sampler, "score_candidate", _stub_score)
    cfg = SampleConfig(model=model_dir, data=data, out=tmp_path / "pairs.jsonl", gold_below=0.0, margin=0.1,
                       decoding=Decoding(max_new_tokens=10, batch_size=2), progress=False,
                       tps=TPSConfig(epsilon=0.5, top_k=3, max_branch_points=2, min_alt_prob=0.0, branch_in="anywhere"))
    s = sample(cfg, model=model, tokenizer=tok)
    records = read(cfg.out)
    assert s["pairs"] == len(records) > 0
    sides = {r["meta"]["pair_sides"] for r in records}
    assert sides <= {"greedy_vs_branch", "branch_vs_branch"} and "branch_vs_branch" in sides
    assert {r["meta"]["pair_kind"] for r in records} == {"sampled_chosen"}
    assert all(r["chosen_source"] == "sampled" for r in records)
    path, stats = prepare(cfg.out, model_dir, tmp_path / "tok", kind="preference", max_length=512, progress=False)
    assert stats.written == stats.sampled_ids == len(records)
    batch = next(Loader(path, "arrayrecord", global_batch=len(records), seed=0, shuffle=False, pad_id=0,
                        pad_multiple=64, max_length=512))
    for i, r in enumerate(records):
        P, b = len(r["prompt_ids"]), r["meta"]["branch_position"]
        chosen, rejected = batch["chosen_ids"][i], batch["rejected_ids"][i]
        assert (chosen[:P + b] == rejected[:P + b]).all() and chosen[P + b] != rejected[P + b]
        assert r["meta"]["shared_prefix_tokens"] == b  # counted on the completion ids DPO sees
        for side in ("chosen", "rejected"):  # DPO sees the prompt, then the tokens exactly as sampled
            n = P + len(r[f"{side}_ids"])
            assert batch[f"{side}_ids"][i, :n].tolist() == r["prompt_ids"] + r[f"{side}_ids"]
            assert batch[f"{side}_weights"][i, :n].tolist() == [0.0] * P + [1.0] * len(r[f"{side}_ids"])
        both = [x for x in (r["meta"]["chosen_branch"], r["meta"]["rejected_branch"]) if x]
        assert b == min(x["position"] for x in both)
    same_point = [r for r in records if r["meta"]["pair_sides"] == "branch_vs_branch"
                  and r["meta"]["chosen_branch"]["position"] == r["meta"]["rejected_branch"]["position"]]
    assert same_point  # k = 3: two alternatives at one point make a pair of their own
    audit = s["audit"]
    assert sum(audit["pair_kinds"].values()) == len(records) and audit["chosen_source"] == {"sampled": len(records)}
    assert audit["prompts_without_pair"]["count"] == sum(1 for o in audit["prompts_without_pair"]["prompts"])


def test_sample_trajectory_mode_python_entry(tiny, tmp_path):
    model_dir, data, model, tok = tiny
    cfg = SampleConfig(model=model_dir, data=data, out=tmp_path / "a.jsonl", mode="trajectory", num_samples=3,
                       decoding=Decoding(max_new_tokens=8, batch_size=4, temperature=1.0, seed=1), progress=False)
    s = sample(cfg, model=model, tokenizer=tok)
    assert (s["records"], s["prompts"], s["candidates"], s["branches"], s["branch_points"]) == (3, N_TOOL_TURNS, 9, 0, 0)
    assert s["errors"]["format"] == 9 and s["pairs"] == len(read(cfg.out)) > 0
    records = read(cfg.out)
    check_well_formed(records)
    assert all(r["meta"]["mode"] == "trajectory" and r["meta"]["branch_position"] is None for r in records)
    assert {r["meta"]["rejected_kind"] for r in records} == {"sample"}
    again = SampleConfig(**{**cfg.__dict__, "out": tmp_path / "b.jsonl"})
    sample(again, model=model, tokenizer=tok)
    assert (tmp_path / "b.jsonl").read_text() == cfg.out.read_text()  # same seed, same samples
    with pytest.raises(ValueError, match="esm.param_value"):  # --esm.param-value -1
        sample(SampleConfig(**{**cfg.__dict__, "esm": esm.ErrorWeights(param_value=-1.0)}), model=model, tokenizer=tok)
    with pytest.raises(DataError, match="temperature > 0"):
        sample(SampleConfig(**{**cfg.__dict__, "decoding": Decoding()}), model=model, tokenizer=tok)


def test_a_call_answered_by_an_error_is_not_sampled(tiny, tmp_path):
    from tool_records import _call

    from ttpa_jax.sample.candidates import read_prompts

    model_dir, _, _, tok = tiny
    user, call, result, answer = RECORDS[0]["messages"]
    failed = {"role": "assistant", "content": "", "tool_calls": [_call("call_9", "get_weather", {"city": "Lyom"})]}
    error = {"role": "tool", "tool_call_id": "call_9", "name": "get_weather", "content": "{\"error\": \"unknown city\"}"}
    recovered = {"id": "r4", "tools": TOOLS, "messages": [user, failed, error, call, result, answer]}
    data = write_jsonl(tmp_path / "sft.jsonl", [*RECORDS, recovered])
    n_records, prompts = read_prompts(data, tok, 12, 4096)
    assert n_records == 4 and len(prompts) == N_TOOL_TURNS + 1
    [prompt] = [p for p in prompts if p.record_id == "r4"]
    assert prompt.turn == 3 and prompt.gold == [{"name": "get_weather", "arguments": {"city": "Lyon", "unit": "celsius"}}]
    _, with_answers = read_prompts(data, tok, 12, 4096, answer_turns=True)
    assert sorted((p.record_id, p.turn) for p in with_answers if p.kind == "answer") == [("r1", 3), ("r2", 6), ("r4", 5)]


def gold_config(model_dir, data, out, **kw):
    tps = TPSConfig(anchor="gold", epsilon=0.3, dynamic_m=2, max_branch_points=3, min_alt_prob=0.0)
    return SampleConfig(model=model_dir, data=data, out=out, progress=False,
                        decoding=Decoding(max_new_tokens=32, batch_size=2), tps=tps, **{"margin": 0.1, **kw})


def test_gold_anchored_pairs_branch_from_the_gold_call_and_resume(tiny, tmp_path, monkeypatch):
    """--tps.anchor gold: every tool-call pair is the gold completion (the ids a gold-chosen side
    trains on) against the gold prefix + the model's own alternative token + its continuation,
    branching only inside the call; answer turns pair as in TPS; a run stopped midway and started
    again ends with the same bytes."""
    from ttpa_jax.core import record_log
    from ttpa_jax.decode.branching import call_steps
    from ttpa_jax.sample.audit import DIVERGENCE
    from ttpa_jax.sample.candidates import read_prompts
    from ttpa_jax.sample.records import gold_ids

    model_dir, data, model, tok = tiny
    cfg = gold_config(model_dir, data, tmp_path / "whole.jsonl")
    s = sample(cfg, model=model, tokenizer=tok)
    records = read(cfg.out)
    check_well_formed(records)
    _, prompts = read_prompts(data, tok, 32, 4096, answer_turns=True)
    by_turn = {(p.record_id, p.turn): p for p in prompts}
    calls = [r for r in records if r["meta"]["turn_kind"] == "tool_call"]
    assert len({(r["meta"]["id"], r["meta"]["turn"]) for r in calls}) == N_TOOL_TURNS  # every call turn pairs
    for r in calls:
        m, gold = r["meta"], gold_ids(tok, by_turn[(r["meta"]["id"], r["meta"]["turn"])])
        b = m["branch_position"]
        assert m["pair_kind"] == "gold_anchored" and m["rejected_kind"] == "anchored" and r["chosen_source"] == "gold"
        assert r["chosen_ids"] == gold and r["chosen"][0]["tool_calls"]
        assert r["rejected_ids"][:b] == gold[:b] and r["rejected_ids"][b] == m["rejected_branch"]["token_id"] != gold[b]
        assert m["shared_prefix_tokens"] == b and m["rejected_branch"]["gold_token_id"] == gold[b]
        assert call_steps(tok, gold)[b] and gold[b] != tok.eos_token_id  # inside the call, never EOS
        assert m["branch_location"] in ("name", "key", "value", "syntax")
        assert m["chosen_score"] == 1.0 and m["rejected_score"] <= 0.9 + 1e-9
        assert m["divergence"] in DIVERGENCE and m["chosen_longer"] in (True, False, None)
    points = {(r["meta"]["id"], r["meta"]["turn"], r["meta"]["branch_position"]) for r in calls}
    assert len(points) == len(calls) and len(calls) <= 3 * N_TOOL_TURNS  # one alternative per point
    assert {r["meta"]["pair_kind"] for r in records if r["meta"]["turn_kind"] == "answer"} <= {"gold_chosen",
                                                                                             "sampled_chosen"}
    audit = s["audit"]
    assert audit["pair_kinds"]["gold_anchored"] == len(calls) and sum(audit["pair_kinds"].values()) == len(records)
    assert "outside" not in audit["branch_locations"] and sum(audit["divergence"].values()) == len(records)
    assert audit["shared_prefix_tokens"]["max"] < 32

    # Stopped midway (the third prompt's log line torn), then the same run again: the whole run's bytes.
    out, real, calls_made = tmp_path / "pairs.jsonl", record_log.RecordLog.append, [0]

    class Stop(Exception):
        pass

    def append(self, record):
        calls_made[0] += 1
        if calls_made[0] == 3:
            line = json.dumps(record).encode()
            record_log.write_synced(self._fd, line[: len(line) // 2])
            raise Stop
        real(self, record)

    monkeypatch.setattr(record_log.RecordLog, "append", append)
    with pytest.raises(Stop):
        sample(gold_config(model_dir, data, out), model=model, tokenizer=tok)
    monkeypatch.setattr(record_log.RecordLog, "append", real)
    again = sample(gold_config(model_dir, data, out), model=model, tokenizer=tok)
    assert out.read_bytes() == cfg.out.read_bytes() and again["audit"] == s["audit"]


def test_gold_anchored_pairs_keep_the_margin(tiny, tmp_path, monkeypatch):
    """A branch scoring within --margin of the gold call (an equivalent alternative) is not rejected."""
    model_dir, data, model, tok = tiny
    seen = []

    def score(text, prompt, weights, format):
        s = _stub_score(text, prompt, weights, format)
        if prompt.kind == "tool_call":
            seen.append((text, s.score))
        return s

    monkeypatch.setattr(sampler, "score_candidate", score)
    s = sample(gold_config(model_dir, data, tmp_path / "pairs.jsonl", margin=0.3), model=model, tokenizer=tok)
    calls = [r for r in read(tmp_path / "pairs.jsonl") if r["meta"]["turn_kind"] == "tool_call"]
    assert any(sc > 0.7 for _, sc in seen) and any(sc <= 0.7 for _, sc in seen)  # both sides of the margin
    assert len(calls) == sum(sc <= 0.7 + 1e-9 for _, sc in seen) and all(r["meta"]["rejected_score"] <= 0.7 + 1e-9
                                                                          for r in calls)
    assert s["audit"]["pair_kinds"]["gold_anchored"] == len(calls)


def test_sample_help_documents_the_anchor(capsys):
    with pytest.raises(SystemExit):
        sampler.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--tps.anchor {greedy,gold}" in out and "not the paper's" in out
