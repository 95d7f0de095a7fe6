"""Fault tests of ``train``: SIGTERM mid-run (the step saved, exit 75, the same command continues to
the uninterrupted run's losses), a truncated latest checkpoint (skipped with one warning naming its
step), a save on a full disk (one line; the earlier checkpoint intact, the half-written one removed
on the next start), NaN weights (one line, no traceback; SFT and GRPO)."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import metrics, sft_records, write_jsonl

from ttpa_jax.train import cli
from ttpa_jax.train.checkpoint import Checkpoints
from ttpa_jax.train.loop import train
from ttpa_jax.train.methods import parse_cli
from ttpa_jax.train.preemption import EXIT_PREEMPTED, Preempted

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
STEPS = 6


def args(model_dir, data, out, *extra) -> list[str]:
    return ["sft", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--steps", str(STEPS),
            "--save-every", "1000", "--dataset.batch-size", "4", "--lora.rank", "4", "--optim.lr", "5e-3",
            "--optim.warmup-steps", "2", "--mesh.fsdp", "1", "--no-progress", *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("faults-train") / "sft.jsonl", sft_records(12))


@pytest.fixture(scope="module")
def whole(tiny_model_dir, data, tmp_path_factory):
    """The uninterrupted run's metrics."""
    out = tmp_path_factory.mktemp("faults-train") / "whole"
    train(parse_cli(args(tiny_model_dir, data, out)), progress=False)
    return metrics(out)


def same_losses(run, whole):
    got = {r["step"]: r for r in metrics(run)}
    assert sorted(got) == list(range(1, STEPS + 1))  # every step once
    for w in whole:
        for k in ("loss", "grad_norm", "learning_rate"):
            assert abs(got[w["step"]][k] - w[k]) < 1e-6, (w["step"], k)


def saved_steps(run) -> list[int]:
    return sorted(int(p.name) for p in (Path(run) / "checkpoints").iterdir() if p.name.isdigit())


def test_sigterm_saves_the_step_and_the_same_command_continues_exactly(tiny_model_dir, data, whole, tmp_path,
                                                                     monkeypatch, capsys):
    from ttpa_jax.train.run_log import RunLog

    real = RunLog.log

    def log(self, step, metrics):  # SIGTERM arrives during step 3, as a scheduler would send it
        real(self, step, metrics)
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    run = tmp_path / "run"
    monkeypatch.setattr(RunLog, "log", log)
    with pytest.raises(Preempted) as stopped:
        cli.main(args(tiny_model_dir, data, run))
    monkeypatch.undo()
    assert stopped.value.code == EXIT_PREEMPTED == 75
    assert saved_steps(run) == [3]  # --save-every 1000: the step it stopped at is the only checkpoint
    out = capsys.readouterr().out
    assert f"stopped by SIGTERM after step 3 of {STEPS}: saved checkpoint 3 in {run / 'checkpoints'}; rerun the same " \
           "command to continue (exit code 75)" in out
    train(parse_cli(args(tiny_model_dir, data, run)), progress=False)  # the same command
    same_losses(run, whole)


def test_unreadable_checkpoints_are_skipped_with_one_warning_each(tiny_model_dir, data, whole, tmp_path, capsys):
    run = tmp_path / "run"
    cmd = args(tiny_model_dir, data, run, "--save-every", "2", "--stop-after", "4")
    train(parse_cli(cmd), progress=False)
    assert saved_steps(run) == [2, 4]
    for damaged in (run / "checkpoints" / "4" / "opt_state").glob("ocdbt.process_0/d/*"):
        os.truncate(damaged, damaged.stat().st_size // 3)  # as a failing disk or an interrupted copy leaves it
    capsys.readouterr()
    train(parse_cli(cmd), progress=False)  # the same command: resumes from 2, runs to 6
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: checkpoint step 4 cannot be read ("), lines
    assert "trying the one before" in lines[0] and (run / "checkpoints-unreadable" / "4").is_dir()
    assert saved_steps(run) == [2, 4, 6]
    same_losses(run, whole)
    # None readable: one warning per checkpoint, then one error line naming the run directory, exit 2.
    for step in (2, 4, 6):
        (run / "checkpoints" / str(step) / "meta" / "metadata").write_text("{not json")
    assert cli.main(cmd) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert [line.split(" cannot")[0] for line in lines[:3]] == [f"warning: checkpoint step {s}" for s in (6, 4, 2)]
    assert len(lines) == 4 and lines[3].startswith(f"error: {run}: none of its checkpoints can be read (steps 2, 4, 6;")


def _mount_small_disk(path: Path, size: str) -> bool:
    path.mkdir()
    if shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_full_disk_ends_in_one_line_and_keeps_the_earlier_checkpoint(tiny_model_dir, data, tmp_path, monkeypatch,
                                                                      capsys):
    disk = tmp_path / "disk"
    mounted = _mount_small_disk(disk, "700k")  # fits the data and one checkpoint, not two
    run = disk / "run"
    cmd = args(tiny_model_dir, data, run, "--save-every", "2", "--steps", "4")
    try:
        if mounted:
            proc = subprocess.run([sys.executable, "-m", "ttpa_jax.train", *cmd], capture_output=True, text=True,
                                  env=ENV, timeout=1800)
            code, err = proc.returncode, proc.stderr
        else:  # no tmpfs to be had (not root): the same failure, raised where orbax writes
            from orbax.checkpoint import CheckpointManager

            real = CheckpointManager.save

            def save(self, step, *a, **k):
                if step == 4:
                    raise ValueError(f"RESOURCE_EXHAUSTED: Error writing local file \"{self.directory}/4\": "
                                     "No space left on device [os_error_code='28'] [tensorstore_spec='{...}']")
                return real(self, step, *a, **k)

            monkeypatch.setattr(CheckpointManager, "save", save)
            code, err = cli.main(cmd), capsys.readouterr().err
        assert code == 2
        [line] = [line for line in err.splitlines() if line.startswith("error:")]
        assert line.startswith(f"error: cannot save checkpoint step 4 in {run / 'checkpoints'}: "
                               "No space left on device; the earlier checkpoints are intact (newest: step 2)")
        echoes = ("Traceback", "orbax", "asyncio", "Event loop", "tensorstore", "RESOURCE_EXHAUSTED")
        assert not [w for w in echoes if w in err], err[-3000:]  # none of orbax's hundreds of lines
        assert saved_steps(run) == [2]
        if mounted:
            assert any(p.name.endswith(".orbax-checkpoint-tmp") for p in (run / "checkpoints").iterdir())
        Checkpoints(run).close()  # what the next start opens first: the half-written one is removed
        assert [p.name for p in (run / "checkpoints").iterdir()] == ["2"]
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=False)


def nan_model(model_dir, out: Path) -> Path:
    from safetensors.numpy import load_file, save_file

    shutil.copytree(model_dir, out)
    weights = load_file(out / "model.safetensors")
    name = next(k for k in sorted(weights) if k.endswith("mlp.up_proj.weight"))
    weights[name] = np.full_like(weights[name], np.nan)
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.mark.parametrize("method", ["sft", "grpo"])
def test_nan_weights_stop_at_step_one_with_one_line(tiny_model_dir, data, tmp_path, capsys, method):
    model = nan_model(tiny_model_dir, tmp_path / "nan-model")
    cmd = [method, "--model", str(model), "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "3",
           "--save-every", "1", "--lora.rank", "4", "--mesh.fsdp", "1", "--no-progress"]
    if method == "grpo":
        cmd += ["--group-size", "2", "--prompts-per-step", "2", "--max-new-tokens", "4"]
    assert cli.main(cmd) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: step 1: loss nan"), lines
    assert "training diverged; the last good checkpoint is step 0" in lines[0]
    assert not (tmp_path / "run" / "checkpoints").is_dir() or saved_steps(tmp_path / "run") == []

