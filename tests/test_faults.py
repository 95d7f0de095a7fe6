"""Fault tests: what a killed or failing run leaves, and that the same command run again ends as an
uninterrupted run would. ``sample`` and ``evaluate`` killed with SIGKILL mid-run (``kill_after.py``
tears a record-log line first), a changed setting against an existing output."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import sft_records, write_jsonl

import ttpa_jax
from ttpa_jax.sample import sampler
from ttpa_jax.sample.audit import audit_path
from ttpa_jax.sample.output import prompt_log_path
from ttpa_jax.text.prompts import load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}


def killed(kill_at: int, module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m module args`` SIGKILLed in the middle of its ``kill_at``-th record-log line."""
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_after.py"), str(kill_at), module, *args],
                          capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)
    assert proc.returncode == -9, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return ttpa_jax.load_pretrained(tiny_model_dir), load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory):
    return Path(write_jsonl(tmp_path_factory.mktemp("faults") / "sft.jsonl", sft_records(8)))


SAMPLE_ARGS = ["--decoding.max-new-tokens", "10", "--decoding.batch-size", "2", "--tps.epsilon", "0.9",
               "--tps.top-k", "2", "--tps.max-branch-points", "2", "--tps.min-alt-prob", "0",
               "--tps.branch-in", "anywhere", "--no-progress"]


def sys_args(model_dir, data, out):
    return ["--model", str(model_dir), "--data", str(data), "--out", str(out), *SAMPLE_ARGS]


def sample_config(model_dir, data, out):
    import tyro

    return tyro.cli(sampler.SampleConfig, args=sys_args(model_dir, data, out))


def test_sample_killed_mid_run_continues_to_the_uninterrupted_output(tiny_model_dir, sft_file, loaded, tmp_path):
    model, tok = loaded
    whole = sampler.sample(sample_config(tiny_model_dir, sft_file, tmp_path / "whole.jsonl"), model=model,
                           tokenizer=tok)
    assert whole["prompts"] == 16 and whole["pairs"] > 0
    out = tmp_path / "pairs.jsonl"
    killed(4, "ttpa_jax.sample", sys_args(tiny_model_dir, sft_file, out), tmp_path)
    log_lines = prompt_log_path(out).read_bytes().split(b"\n")
    assert len(log_lines) == 4 and log_lines[-1]  # three prompts logged, the fourth's line torn
    again = sampler.sample(sample_config(tiny_model_dir, sft_file, out), model=model, tokenizer=tok)
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()  # nothing twice, nothing lost
    assert again["pairs"] == whole["pairs"] and again["candidates"] == whole["candidates"]
    assert json.loads(audit_path(out).read_text()) == whole["audit"]
    # A finished run rerun decodes nothing and writes nothing more.
    assert sampler.sample(sample_config(tiny_model_dir, sft_file, out), model=model, tokenizer=tok)["pairs"] == whole["pairs"]
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()


def test_sample_refuses_other_settings_against_an_existing_output(tiny_model_dir, sft_file, loaded, tmp_path, capsys):
    model, tok = loaded
    out = tmp_path / "pairs.jsonl"
    sampler.sample(sample_config(tiny_model_dir, sft_file, out), model=model, tokenizer=tok)
    before = out.read_bytes()
    assert sampler.main([*sys_args(tiny_model_dir, sft_file, out), "--margin", "0.3", "--tps.top-k", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "margin, tps.top_k" in err and str(out) in err, err
    assert out.read_bytes() == before
    (tmp_path / "other.jsonl").write_text('{"not": "ours"}\n')
    assert sampler.main(sys_args(tiny_model_dir, sft_file, tmp_path / "other.jsonl")) == 2
    assert "other.prompts.jsonl does not" in capsys.readouterr().err


def test_evaluate_killed_mid_run_continues_to_the_uninterrupted_metrics(tiny_model_dir, sft_file, tmp_path, capsys):
    from ttpa_jax.evaluate import evaluator
    from ttpa_jax.evaluate.prediction_log import prediction_log_path

    def cmd(out):
        return ["--data", str(sft_file), "--model", str(tiny_model_dir), "--out", str(out), "--max-new-tokens", "8",
                "--batch-size", "2", "--no-progress"]

    assert evaluator.main(cmd(tmp_path / "whole.json")) == 0
    out = tmp_path / "run.json"
    killed(3, "ttpa_jax.evaluate", cmd(out), tmp_path)
    log = prediction_log_path(out)
    assert log.read_bytes().count(b"\n") == 2 and not out.exists()  # two predictions logged, the third torn
    assert evaluator.main(cmd(out)) == 0  # the same command
    assert json.loads(out.read_text()) == json.loads((tmp_path / "whole.json").read_text())
    assert log.read_bytes() == prediction_log_path(tmp_path / "whole.json").read_bytes()  # each once, same order
    capsys.readouterr()
    assert evaluator.main([*cmd(out), "--max-new-tokens", "9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "other settings (max_new_tokens)" in err, err
