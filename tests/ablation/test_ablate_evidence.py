"""The evidence experiment's pieces: the paired bootstrap, the recipe rule, the validation split, the
systems and their shared budget, and its report section from per-run files alone."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from ttpa_jax.ablation import bootstrap as B
from ttpa_jax.ablation import cli as ablate_cli
from ttpa_jax.ablation import evidence, evidence_report
from ttpa_jax.ablation.runs import split_validation
from ttpa_jax.ablation.scale import make_scale
from ttpa_jax.ablation.systems import FOLLOW_UP_NAMES, RECIPES, evidence_systems
from ttpa_jax.core.errors import ConfigError
from ttpa_jax.experiments.pipeline import FOLLOW_UP_RECIPES


def _call(i, score, errors=None):
    return {"id": str(i), "turn": 1, "kind": "tool_call", "score": score, "errors": errors or {}}


def test_bootstrap_interval_matches_a_direct_resampling():
    rng = np.random.default_rng(3)
    diffs = {0: rng.normal(0.1, 0.3, 40), 1: rng.normal(0.05, 0.3, 60)}
    iv = B.paired_bootstrap(diffs, resamples=4000, seed=7)
    # the same draws computed one resample at a time
    r = np.random.default_rng(7)
    idx = {s: r.integers(0, d.size, size=(4000, d.size)) for s, d in diffs.items()}
    means = np.array([sum(diffs[s][idx[s][k]].sum() for s in diffs) / 100 for k in range(4000)])
    assert iv.mean == pytest.approx(np.concatenate(list(diffs.values())).mean())
    assert (iv.low, iv.high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    assert iv.detectable == pytest.approx(2.8 * means.std(ddof=1))
    assert iv.turns == 100 and set(iv.per_seed) == {0, 1}
    # the standard error is close to the analytic one of a mean of 100 values with sd 0.3
    assert iv.detectable / 2.8 == pytest.approx(0.3 / 10, rel=0.2)


def test_bootstrap_verdicts_and_pairing():
    a = {0: [_call(i, 1.0) for i in range(30)]}
    b = {0: [_call(i, 0.0) for i in range(30)] + [_call(99, 1.0)]}  # turn 99 only in b: not paired
    diffs = B.paired_differences(a, b, B.TURN_METRICS[0][2])
    assert diffs[0].size == 30 and (diffs[0] == 1).all()
    assert B.paired_bootstrap(diffs).verdict == "better"
    same = B.paired_bootstrap(B.paired_differences(a, a, B.TURN_METRICS[0][2]))
    assert same.verdict == "no difference shown" and same.mean == 0
    assert B.paired_bootstrap({}) is None


def test_turn_metrics():
    wrong_tool, bad_key, exact = _call(1, 0.2, {"wrong_tool": 1}), _call(2, 0.5, {"param_name": 1}), _call(3, 1.0)
    m = {key: fn for _, key, fn in B.TURN_METRICS}
    assert [m["tool_selection"](r) for r in (wrong_tool, bad_key, exact)] == [0, 1, 1]
    assert [m["param_names"](r) for r in (wrong_tool, bad_key, exact)] == [0, 0, 1]
    assert [m["param_values"](r) for r in (wrong_tool, bad_key, exact)] == [0, 0, 1]
    answer = {"id": "1", "turn": 3, "kind": "answer", "return_values": {"reason": "echo"}}
    assert m["return_values"](answer) == 0 and m["esm_score"](answer) is None
    assert m["return_values"]({**answer, "return_values": {"reason": "unjudged"}}) is None


def test_recipe_rule_picks_the_best_validation_esm_and_the_earlier_on_ties():
    run = lambda esm: {"heldout": {"esm_score": esm}}  # noqa: E731
    names = [f"recipe-{n}" for n in RECIPES]
    assert evidence.choose({names[0]: run(0.5), names[2]: run(0.7), "recipe-sft": run(0.9)}) == list(RECIPES)[2]
    assert evidence.choose({names[1]: run(0.7), names[2]: run(0.7)}) == list(RECIPES)[1]
    assert evidence.choose({}) is None
    follow_up = f"recipe-{next(iter(FOLLOW_UP_RECIPES))}"  # tried after the runs: scored, never chosen
    assert evidence.choose({names[0]: run(0.5), follow_up: run(0.9)}) == list(RECIPES)[0]


def test_recipe_table_marks_follow_ups():
    row = {"esm_score": 0.5, "tool_selection_accuracy": 0.5, "param_name_accuracy": 0.4, "param_value_accuracy": 0.3,
           "scored_tool_call_turns": 45, "pairs": 60, "dpo_steps": 20, "settings": {"sft_weight": 1.0}}
    text = "\n".join(evidence_report.recipe_lines({
        "chosen": "dpo", "rule": evidence.RULE, "validation_records": 30, "candidates": {"recipe-dpo": row},
        "follow_ups": {"recipe-dpo-nll-answers": {**row, "esm_score": 0.6}}}))
    assert "| recipe-dpo | sft_weight=1.0 | 60 |" in text and "| recipe-dpo-nll-answers (follow-up) |" in text
    assert "**dpo**" in text and "never a candidate" in text


def test_chosen_recipe_needs_the_file_or_a_name(tmp_path):
    with pytest.raises(ConfigError, match="recipe.json: missing"):
        evidence.chosen_recipe(tmp_path, None)
    (tmp_path / "recipe.json").write_text(json.dumps({"chosen": "dpop"}))
    assert evidence.chosen_recipe(tmp_path, None) == "dpop"
    assert evidence.chosen_recipe(tmp_path, "dpo") == "dpo"
    with pytest.raises(ConfigError, match="unknown"):
        evidence.chosen_recipe(tmp_path, "nope")


def test_split_validation_sets_the_last_records_aside(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(f'{{"i": {i}}}\n' for i in range(10)))
    fit = split_validation(train, 3)
    assert [json.loads(x)["i"] for x in fit.read_text().splitlines()] == list(range(7))
    assert [json.loads(x)["i"] for x in (tmp_path / "validation.jsonl").read_text().splitlines()] == [7, 8, 9]
    small = tmp_path / "small" / "train.jsonl"
    small.parent.mkdir()
    small.write_text('{"i": 0}\n')
    with pytest.raises(ConfigError, match="too few"):
        split_validation(small, 3)


def test_evidence_systems_share_ttpa_recipe_and_run_ttpa_first():
    systems = evidence_systems("dpop")
    names = [s.name for s in systems]
    assert names.index("ttpa") < names.index("dpo-traj") and names.index("ttpa") < names.index("sft-plus")
    ttpa, traj = systems[names.index("ttpa")], systems[names.index("dpo-traj")]
    assert dict(ttpa.recipe) == RECIPES["dpop"] and ttpa.runs_as == "recipe-dpop"
    assert dict(traj.recipe) == {k: v for k, v in RECIPES["dpop"].items() if k != "tps_anchor"}
    with pytest.raises(ValueError, match="unknown TTPA recipe"):
        evidence_systems("nope")


def _write_run(root: Path, system: str, seed: int, scores: list[float], label: str):
    d = root / system
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed{seed}.json").write_text(json.dumps({
        "system": system, "seed": seed, "label": label, "scale": "evidence", "heldout": {"esm_score": float(np.mean(scores))},
        "bfcl": None, "audit": {"pairs": 3, "pair_kinds": {"sampled_chosen": 3}} if system == "ttpa" else None}))
    (d / f"seed{seed}.turns.json").write_text(json.dumps([_call(i, s) for i, s in enumerate(scores)]))


def test_report_section_from_files_alone(tmp_path):
    for seed in (0, 1):
        _write_run(tmp_path, "sft", seed, [0.5] * 20, "SFT")
        _write_run(tmp_path, "ttpa", seed, [0.9] * 20, "TTPA (dpop)")
    text = evidence_report.section(tmp_path)
    assert "TTPA - SFT: +0.400 over 40 paired call turns (seed 0 +0.400, seed 1 +0.400); TTPA is better" in text
    assert "recipe has not been picked" in text and "| TTPA (dpop), seed 1 | 3 | sampled_chosen 3 |" in text
    doc = evidence_report.splice("# Intro\n", text)
    assert evidence_report.splice(doc, text) == doc and doc.startswith(evidence_report.BEGIN) and doc.endswith("# Intro\n")


def test_call_length_table_counts_arguments_against_sft():
    def rows(*n_args):
        calls = [json.dumps({"name": "f", "arguments": {f"a{j}": j for j in range(n)}}) for n in n_args]
        return [{"id": f"r{i}", "turn": 1, "kind": "tool_call", "prediction": f"<tool_call>{c}</tool_call>"}
                for i, c in enumerate(calls)] + [{"id": "r9", "turn": 1, "kind": "tool_call", "prediction": "no call"}]
    turns = {"sft": {0: rows(2, 2, 1)}, "ttpa": {0: rows(1, 2, 3)}}
    lines = evidence_report.call_length_lines({}, turns, ["zero-shot", "sft", "ttpa", "sft-plus"])
    assert lines[2:] == ["| ttpa | 1 / 1 / 3 |", "| sft-plus | – |"]


def test_larger_evidence_scale_multiplies_every_size():
    one, ten = (make_scale(name, None, Path("runs")) for name in ("evidence", "evidence-x10"))
    sizes = ("num", "sft_steps", "sample_records", "eval_records", "eval_answer_records")
    assert all(getattr(ten.pipeline, f) == 10 * getattr(one.pipeline, f) for f in sizes)
    same = {f.name for f in dataclasses.fields(one.pipeline)} - set(sizes) - {"out"}
    assert all(getattr(ten.pipeline, f) == getattr(one.pipeline, f) for f in same)  # the recipe and lrs stay
    assert (ten.validation_records, ten.bfcl_limit, one.bfcl_limit) == (10 * one.validation_records, None, 25)
    assert "BFCL non-live by bfcl-eval's checker, every entry" in "\n".join(evidence_report.design_lines("evidence-x10"))
    for bad in ("evidence-x0", "evidence-xten"):
        with pytest.raises(ValueError, match="evidence-x<k>"):
            make_scale(bad, None, Path("runs"))


def test_larger_run_writes_apart_and_takes_the_recipe_picked_at_cpu_size(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs/results/evidence").mkdir(parents=True)
    (tmp_path / "docs/results/evidence/recipe.json").write_text(json.dumps({"chosen": "dpop"}))
    seen = {}
    monkeypatch.setattr(evidence, "run_evidence", lambda scale, out, results, seeds, names, recipe: seen.update(
        scale=scale.name, out=out, results=results, recipe=recipe) or [])
    ablate_cli.evidence_main("evidence", ablate_cli.EvidenceArgs(size=10))
    assert seen == {"scale": "evidence-x10", "out": Path("runs/evidence-x10"),
                    "results": Path("docs/results/evidence-x10"), "recipe": "dpop"}


def test_follow_up_arm_takes_its_own_steps_and_gets_its_own_comparisons(tmp_path, monkeypatch):
    arm = FOLLOW_UP_NAMES[0]
    budgets = {}
    monkeypatch.setattr(evidence.R, "run_system", lambda seed_run, s, results: budgets.update(
        {s.name: seed_run.budget and seed_run.budget.name}) or s.name)
    scale = make_scale("evidence", None, tmp_path)
    assert evidence.run_evidence(scale, tmp_path, tmp_path, (0,), ("ttpa", arm), "dpo-nll") == ["ttpa", arm]
    assert budgets == {"ttpa": "ttpa", arm: None}
    for seed in (0, 1):
        _write_run(tmp_path, "sft", seed, [0.5] * 20, "SFT")
        _write_run(tmp_path, "ttpa", seed, [0.9] * 20, "TTPA (dpo-nll)")
        _write_run(tmp_path, arm, seed, [0.7] * 20, "TTPA (answers, follow-up)")
    text = evidence_report.section(tmp_path)
    assert "## Follow-up arm: TTPA (answers, follow-up) against SFT, TTPA and SFT+" in text
    assert "TTPA (answers, follow-up) - TTPA (dpo-nll): -0.200 over 40 paired call turns" in text
