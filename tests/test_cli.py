"""Every stage's command line: ``main(argv=None) -> int`` through ``core.cli.stage_main``.

``--help`` works for every stage, and a bad path prints one line ``error: ...`` naming it and exits 2,
without a traceback. The ``python -m`` entry points (``__main__.py`` and the top-level shims) call the
same wrapped ``main``.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

from ttpa_jax.core.cli import EXIT_USER_ERROR, error_message, stage_main
from ttpa_jax.core.errors import ConfigError, UserError

# python -m NAME -> the module whose main it runs
ENTRY_POINTS = {
    "ttpa_jax.construct": "ttpa_jax.construct.build",
    "ttpa_jax.sample": "ttpa_jax.sample.sampler",
    "ttpa_jax.train": "ttpa_jax.train.cli",
    "ttpa_jax.evaluate": "ttpa_jax.evaluate.evaluator",
    "ttpa_jax.export": "ttpa_jax.export.exporter",
    "ttpa_jax.plan": "ttpa_jax.plan.memory",
    "ttpa_jax.demo": "ttpa_jax.experiments.demo",
    "ttpa_jax.ablate": "ttpa_jax.ablation.cli",
    "ttpa_jax.generate": "ttpa_jax.decode.generate",
    "ttpa_jax.validate": "ttpa_jax.construct.validate",
    "ttpa_jax.models": "ttpa_jax.model.presets",
}
# top-level modules (ttpa_jax/demo.py, ...) rather than packages with a __main__.py
SHIMS = {"ttpa_jax.demo", "ttpa_jax.ablate", "ttpa_jax.generate", "ttpa_jax.validate", "ttpa_jax.models"}


def _bad_path_args(stage: str, tmp_path) -> tuple[list[str], str]:
    """Arguments that give ``stage`` a path that does not exist (or lies under a file), and that path."""
    missing = tmp_path / "missing"
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    out = str(tmp_path / "out")
    table = {
        "ttpa_jax.construct": (["--tools", str(missing / "tools.json"), "--out", out + ".jsonl"], missing / "tools.json"),
        "ttpa_jax.sample": (["--model", str(missing), "--data", str(missing / "d.jsonl"), "--out", out], missing),
        "ttpa_jax.train": (["sft", "--model", str(missing), "--data", str(missing / "d.jsonl"), "--out", out], missing),
        "ttpa_jax.evaluate": (["--data", str(missing / "d.jsonl"), "--predictions", str(missing / "p.jsonl")],
                              missing / "d.jsonl"),
        "ttpa_jax.export": (["--run", str(missing), "--out", out], missing),
        "ttpa_jax.plan": (["--model", str(missing)], missing),
        "ttpa_jax.demo": (["--out", str(a_file / "run")], a_file),
        "ttpa_jax.ablate": (["--out", str(a_file / "run"), "--quick", "--seeds", "0"], a_file),
        "ttpa_jax.generate": (["--model", str(missing), "--prompts", str(missing / "p.jsonl"), "--out", out], missing),
        "ttpa_jax.validate": ([str(missing / "sft.jsonl")], missing / "sft.jsonl"),
    }
    return table[stage]


def _main(stage: str):
    return importlib.import_module(ENTRY_POINTS[stage]).main


@pytest.mark.parametrize("stage", sorted(ENTRY_POINTS))
def test_every_entry_point_runs_the_wrapped_main_of_its_stage(stage):
    entry = importlib.import_module(stage if stage in SHIMS else stage + ".__main__")
    main = _main(stage)
    assert entry.main is main and main.__wrapped__ is not None  # stage_main's functools.wraps
    assert list(inspect.signature(main).parameters) == ["argv"]
    assert inspect.signature(main).parameters["argv"].default is None


@pytest.mark.parametrize("stage", sorted(ENTRY_POINTS))
def test_help_works_for_every_stage(stage, capsys):
    argv = ["sft", "--help"] if stage == "ttpa_jax.train" else ["--help"]
    with pytest.raises(SystemExit) as e:
        _main(stage)(argv)
    assert e.value.code == 0
    assert "--" in capsys.readouterr().out


@pytest.mark.parametrize("stage", sorted(set(ENTRY_POINTS) - {"ttpa_jax.models"}))  # models takes no path
def test_a_bad_path_prints_one_line_naming_it_and_exits_2(stage, tmp_path, capsys):
    argv, path = _bad_path_args(stage, tmp_path)
    assert _main(stage)(argv) == EXIT_USER_ERROR
    lines = capsys.readouterr().err.strip().splitlines()  # a progress bar may have started before
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:] and "Traceback" not in "\n".join(lines), lines
    assert str(path) in errors[0], errors


def test_the_wrapper_turns_user_errors_into_one_line_and_lets_bugs_through(capsys):
    @stage_main
    def fails(argv):
        raise {"user": ConfigError("--x: must be\npositive"), "path": FileNotFoundError(2, "No such file", "/p/q"),
               "bug": KeyError("bug")}[argv[0]]

    assert fails(["user"]) == 2 and capsys.readouterr().err == "error: --x: must be; positive\n"
    assert fails(["path"]) == 2 and capsys.readouterr().err == "error: /p/q: no such file or directory\n"
    with pytest.raises(KeyError):
        fails(["bug"])
    assert issubclass(ConfigError, UserError) and issubclass(UserError, ValueError)
    assert error_message(NotADirectoryError(20, "Not a directory", "/a/b")) == "/a/b: not a directory"


def test_every_user_error_class_shares_the_base():
    from ttpa_jax.construct.generators.protocol import EndpointError
    from ttpa_jax.core.jsonl import DataError
    from ttpa_jax.evaluate.bfcl import BFCLNotInstalled
    from ttpa_jax.model.config import ConfigError as ModelConfigError
    from ttpa_jax.model.hf_io import CheckpointError

    assert ModelConfigError is ConfigError
    assert all(issubclass(c, UserError) for c in (EndpointError, DataError, BFCLNotInstalled, CheckpointError))


def test_evaluate_names_a_bad_model_in_one_line(tmp_path, capsys):
    from tool_records import RECORDS, write_jsonl

    data = tmp_path / "test.jsonl"
    write_jsonl(data, RECORDS)
    missing = tmp_path / "no-model"
    assert _main("ttpa_jax.evaluate")(["--data", str(data), "--model", str(missing)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {missing}"), err
