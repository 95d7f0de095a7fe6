"""The ablation: per-run JSONs in quick mode (and resume), and the report rebuilt from hand-made JSONs
with known numbers (mean, sample std, paired differences, the two-standard-deviation rule)."""

import json
import statistics
from pathlib import Path

import pytest

from ttpa_jax.ablation import cli as ablate
from ttpa_jax.ablation import report as ablate_doc
from ttpa_jax.ablation import scale as ablate_scale
from ttpa_jax.ablation import stats as S

REPO = Path(__file__).resolve().parents[2]


def run_json(system, seed, *, tool, esm, wrong_tool=0, turns=10, bfcl=None, label=None, pairs=None):
    held = {"tool_selection_accuracy": tool, "param_name_accuracy": tool / 2, "param_value_accuracy": None,
            "return_value_accuracy": 0.25, "format_validity": 1.0, "esm_score": esm,
            "errors": {"format": 0, "wrong_tool": wrong_tool}, "scored_tool_call_turns": turns}
    return {"system": system, "label": label or system, "seed": seed, "scale": "default", "model": "m",
            "config": {"pipeline": {"num": 300, "min_candidates": 3, "max_candidates": 3, "max_calls": 2,
                                    "sft_steps": 40, "train_batch_size": 2, "batch_size": 8, "sample_records": 8,
                                    "dpo_steps": 8, "max_new_tokens": 64, "eval_records": 20, "epsilon": 0.2},
                       "bfcl_limit": 4},
            "data": {"train_records": 240, "test_records": 60, **({"pairs": pairs} if pairs is not None else {})},
            "budgets": {"dpo": {"steps": 8, "batch": 2}} if pairs is not None else {},
            "audit": {"pairs": pairs, "branch_points": 2 * pairs, "score_gaps": {"histogram": {"[0.2, 0.3)": pairs}, "median": 0.2}} if pairs else None,
            "wall_seconds": 60.0, "heldout": held,
            "bfcl": None if bfcl is None else {"leaderboard": {"Simple AST": {"display_accuracy": bfcl}},
                                               "esm": {"esm_score": bfcl}}}


# TTPA and SFT over seeds 0-2: tool selection differs by 0.10, 0.12, 0.14 (consistent: above noise);
# the ESM score by +0.3, -0.1, +0.1 (noisy: within noise); BFCL simple only on seed 0 (one seed).
TTPA_TOOL, SFT_TOOL = (0.5, 0.62, 0.74), (0.4, 0.5, 0.6)
TTPA_ESM, SFT_ESM = (0.6, 0.4, 0.5), (0.3, 0.5, 0.4)


def make_runs(tmp_path):
    results = tmp_path / "results"
    for seed in range(3):
        for system, tool, esm, wt, label, pairs in (("ttpa", TTPA_TOOL, TTPA_ESM, 1, "TTPA", 6 + seed),
                                                    ("sft", SFT_TOOL, SFT_ESM, 3, "SFT", None)):
            run = run_json(system, seed, tool=tool[seed], esm=esm[seed], wrong_tool=wt + seed, label=label,
                           bfcl=(0.5 if system == "ttpa" else 0.25) if seed == 0 else None, pairs=pairs)
            path = results / system / f"seed{seed}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(run))
    return results


def test_summary_and_paired_rule_exact(tmp_path):
    runs = S.read_runs(make_runs(tmp_path))
    summ = S.summarize(runs["ttpa"])
    mean, std, n = summ["heldout/tool_selection_accuracy"]
    assert n == 3 and mean == pytest.approx(0.62) and std == pytest.approx(statistics.stdev(TTPA_TOOL))
    assert summ["heldout/errors/wrong_tool"][0] == pytest.approx((1 + 2 + 3) / 3 / 10)  # errors per scored turn
    assert "heldout/param_value_accuracy" not in summ  # undefined in every seed: left out
    assert summ["bfcl/Simple AST"] == (0.5, None, 1)

    comp = S.compare(runs, "ttpa")["sft"]
    tool = comp["heldout/tool_selection_accuracy"]
    assert tool.mean == pytest.approx(0.12) and tool.std == pytest.approx(0.02) and tool.verdict == "above noise"
    esm = comp["heldout/esm_score"]
    assert esm.mean == pytest.approx(0.1) and esm.std == pytest.approx(0.2) and esm.verdict == "within noise"
    # fewer errors is better: TTPA makes 2 fewer wrong-tool errors per 10 turns on every seed
    wrong = comp["heldout/errors/wrong_tool"]
    assert wrong.mean == pytest.approx(0.2) and wrong.std == pytest.approx(0.0) and wrong.verdict == "above noise"
    assert comp["bfcl/Simple AST"].verdict == "one seed" and comp["bfcl/Simple AST"].std is None
    # exactly two standard deviations is not above them
    assert S.paired({0: run_json("a", 0, tool=0.3, esm=0), 1: run_json("a", 1, tool=0.1, esm=0)},
                    {0: run_json("b", 0, tool=0.0, esm=0), 1: run_json("b", 1, tool=0.0, esm=0)},
                    "heldout/tool_selection_accuracy").verdict == "within noise"


def test_report_rebuilds_only_its_section(tmp_path):
    results = make_runs(tmp_path)
    doc = tmp_path / "results.md"
    doc.write_text("# Demo\n\ndemo table\n\n# Ablation: old\n\nold numbers\n\n# BFCL zero-shot\n\nbfcl table\n")
    assert ablate.main(["report", "--results-dir", str(results), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Demo\n\ndemo table\n") and text.rstrip().endswith("# BFCL zero-shot\n\nbfcl table")
    assert "old numbers" not in text and text.count(ablate_doc.BEGIN) == 1
    assert "| Tool selection | 50.0 ± 10.0 | 62.0 ± 12.0 |" in text
    assert "| Metric | SFT | TTPA |" in text  # systems in the fixed order
    assert "| BFCL simple | 25.0 | 50.0 |" in text  # one seed: no ±
    assert "| Tool selection | **+12.0 ± 2.0** |" in text
    assert "| ESM score | +0.100 ± 0.200 |" in text
    assert "TTPA is better by more than two standard deviations of the paired difference on: Tool selection vs SFT" in text
    assert "within two standard deviations (within noise)" in text and "rest on one seed only" in text
    assert "| TTPA | 3 | 240 | 7 ± 1 | DPO 8 steps x 2 pairs |" in text
    assert "| epsilon 0.2 (TTPA's) | 3 | 14 ± 2 | 7 ± 1 | 0.200 ± 0.000 | [0.2, 0.3) 21 |" in text
    assert (tmp_path / "results_ablation.png").stat().st_size > 5000
    ablate.main(["report", "--results-dir", str(results), "--doc", str(doc)])
    assert doc.read_text() == text  # regenerating replaces the marked section in place


def test_unknown_system_and_paper_without_model(capsys):
    assert ablate.main(["--systems", "nope"]) == 2
    assert "unknown system 'nope'" in capsys.readouterr().err
    assert ablate.main(["estimate", "--scale", "paper"]) == 2
    assert "--scale paper: give --model" in capsys.readouterr().err


def test_results_of_another_scale_are_not_mixed_in(tmp_path, capsys):
    results = make_runs(tmp_path)  # scale "default"
    argv = ["--quick", "--seeds", "0", "--systems", "sft", "--out", str(tmp_path / "q"), "--results-dir", str(results)]
    assert ablate.main(argv) == 2
    assert f"{results / 'sft' / 'seed0.json'}: made with scale 'default'" in capsys.readouterr().err


def test_unit_costs_are_fitted_from_stage_seconds():
    scale = ablate_scale.make_scale("default", None, Path("runs"))
    units = ablate_scale.stage_units(scale)  # 20 SFT steps x 3 records, 18 DPO pairs, 24 RL episodes, ...
    over = ablate_scale.UNIT_COSTS["stage_overhead"]
    runs = {"sft": {0: {"stage_seconds": {"sft reversed": over + 6.0 * units["sft_record"],
                                          "evaluate sft": over + 2.0 * units["decode_prompt"]}},
                    1: {"stage_seconds": {"sft reversed": over + 4.0 * units["sft_record"],
                                          "evaluate sft": over + 3.0 * units["decode_prompt"]}}},
            "ttpa": {0: {"stage_seconds": {"sft reversed": 0.0,  # reused: not a measurement
                                           "dpo ttpa": over + 11.0 * units["dpo_pair"],
                                           "evaluate ttpa": over + 100.0 * units["decode_prompt"]}}},
            "grpo": {0: {"stage_seconds": {"grpo grpo": over + 20.0 * units["rl_episode"]}}}}
    fitted = ablate_scale.fitted_unit_costs(runs, scale)
    assert fitted == pytest.approx({"sft_record": 5.0, "decode_prompt": 3.0, "dpo_pair": 11.0, "rl_episode": 20.0})


def test_unit_costs_match_the_committed_runs():
    """The estimate's constants are what the committed default-scale runs measured (within 10%)."""
    runs = S.read_runs(REPO / "docs" / "results")
    runs = {s: {k: r for k, r in per.items() if r.get("scale") == "default"} for s, per in runs.items()}
    fitted = ablate_scale.fitted_unit_costs(runs, ablate_scale.make_scale("default", None, Path("runs")))
    assert set(fitted) == set(ablate_scale.UNIT_COSTS) - {"stage_overhead"}
    for unit, cost in fitted.items():
        assert ablate_scale.UNIT_COSTS[unit] == pytest.approx(cost, rel=0.1), unit


def test_estimate_prints_hours(capsys):
    assert ablate.main(["estimate", "--seeds", "0"]) == 0
    one = float(capsys.readouterr().out.split("about ")[1].split(" hours")[0])
    assert ablate.main(["estimate"]) == 0
    three = float(capsys.readouterr().out.split("about ")[1].split(" hours")[0])
    assert three == pytest.approx(3 * one, abs=0.2)  # both printed to 0.1 h


def test_quick_runs_write_per_run_json_and_resume(tmp_path, capsys):
    out = tmp_path / "ablate"
    argv = ["--quick", "--seeds", "0", "--systems", "zero-shot", "sft", "--out", str(out), "--bfcl-limit", "1"]
    assert ablate.main(argv) == 0
    first = capsys.readouterr().out
    paths = [out / "results" / s / "seed0.json" for s in ("zero-shot", "sft")]
    for path in paths:
        assert str(path) in first
        run = json.loads(path.read_text())
        assert run["scale"] == "quick" and run["heldout"]["scored_tool_call_turns"] > 0
        assert set(run["bfcl"]["categories"]) == set(run["config"]["bfcl_categories"])
        assert run["data"]["train_records"] > 0 and run["wall_seconds"] > 0
    assert json.loads(paths[1].read_text())["budgets"]["sft"]["steps"] == 3
    mtimes = [p.stat().st_mtime_ns for p in paths]
    assert ablate.main(argv + ["--no-report"]) == 0
    second = capsys.readouterr().out
    assert second.count("complete, skipped") == 2 and "== seed 0" not in second
    assert [p.stat().st_mtime_ns for p in paths] == mtimes
    assert "| Metric | zero-shot | SFT |" in (out / "results.md").read_text()
    # a run killed after training: its model is reused (no training step, no export), only the rest redone
    held = json.loads(paths[1].read_text())["heldout"]
    model = out / "seed0" / "reversed" / "sft-model" / "model.safetensors"
    before = model.stat().st_mtime_ns, (out / "seed0" / "reversed" / "sft" / "metrics.jsonl").read_text()
    paths[1].unlink()
    (out / "seed0" / "sft" / "eval-heldout.json").unlink()
    assert ablate.main(["--quick", "--seeds", "0", "--systems", "sft", "--out", str(out), "--bfcl-limit", "1",
                        "--no-report"]) == 0
    assert (model.stat().st_mtime_ns, (out / "seed0" / "reversed" / "sft" / "metrics.jsonl").read_text()) == before
    assert json.loads(paths[1].read_text())["heldout"] == held


def test_bar_p_value_matches_the_t_distribution_in_closed_form():
    import math
    # t = 2 sqrt(n): df 1 is Cauchy, df 2 has p = 1 - t / sqrt(2 + t^2)
    assert S.bar_p_value(2) == pytest.approx(1 - 2 / math.pi * math.atan(2 * math.sqrt(2)), abs=1e-6)
    assert S.bar_p_value(3) == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(2 + 12), abs=1e-6)
    assert S.bar_p_value(10) < S.bar_p_value(5) < S.bar_p_value(3)


def test_sweep_compares_settings_on_their_common_seeds():
    runs = {"ttpa": {k: run_json("ttpa", k, tool=t, esm=0.5, pairs=6) for k, t in enumerate(TTPA_TOOL)},
            "ttpa-eps0.1": {0: run_json("ttpa-eps0.1", 0, tool=0.3, esm=0.5, pairs=4)}}
    lines = ablate_doc.sweep_lines(runs, [("epsilon 0.1", "ttpa-eps0.1"), ("epsilon 0.2", "ttpa")], "Sweep")
    assert "On seed 0, the seeds every setting has." in lines
    row = next(line for line in lines if line.startswith("| epsilon 0.2 |"))
    assert row.split(" | ")[1] == "1" and "| 50.0 |" in row  # TTPA's seed 0 (0.5), not its 3-seed mean (62.0)
    only = ablate_doc.sweep_lines({"ttpa-eps0.1": runs["ttpa-eps0.1"], "ttpa": {1: runs["ttpa"][1]}},
                                  [("epsilon 0.1", "ttpa-eps0.1"), ("epsilon 0.2", "ttpa")], "Sweep")
    assert "The settings share no seed: each row is over its own seeds." in only
