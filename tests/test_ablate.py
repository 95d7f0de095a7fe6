"""The ablation's summary and results document, on made-up per-seed metrics (the runs themselves are
the demo pipeline's stages, tested in test_demo)."""

import pytest

from ttpa_jax.experiments import ablate


def metrics(fmt, esm, tool=0.0):
    return {"tool_selection_accuracy": tool, "param_name_accuracy": 0.0, "param_value_accuracy": 0.0,
            "return_value_accuracy": None, "format_validity": fmt, "esm_score": esm}


def per_seed(tool_for_ttpa=0.0):
    return {seed: {system: metrics(0.2 * seed + i / 10, 0.01 * i, tool_for_ttpa if system == "TTPA" else 0.0)
                   for i, system in enumerate(ablate.SYSTEMS)} for seed in (0, 1, 2)}


def test_summary_is_mean_and_sample_std_over_seeds():
    summary = ablate.summarize(per_seed())
    mean, std = summary["TTPA"]["format_validity"]
    assert mean == pytest.approx(0.3 + 0.2) and std == pytest.approx(0.2)
    assert "return_value_accuracy" not in summary["SFT"]  # undefined in every seed: left out


def test_results_document(tmp_path):
    path = tmp_path / "results.md"
    runs = per_seed()
    ablate.write_results(path, ablate.summarize(runs), runs, ablate.Args(), 125)
    text = path.read_text()
    assert "`python -m ttpa_jax.ablate` (seeds 0, 1, 2; 2 minutes" in text
    assert "| Format validity | 0.200 ± 0.200 | 0.300 ± 0.200 |" in text
    assert "| Return-value parsing | – |" in text
    assert "scores 0 on **Tool selection**, **Parameter names** and **Parameter values**." in text
    assert "differ in **Format validity** and **ESM score**" in text
    runs = per_seed(tool_for_ttpa=0.5)
    ablate.write_results(path, ablate.summarize(runs), runs, ablate.Args(), 125)
    assert "scores 0 on **Parameter names** and **Parameter values**." in path.read_text()
