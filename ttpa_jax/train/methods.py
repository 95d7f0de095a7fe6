"""The training methods: each ``train`` subcommand, its settings class and the unit that trains it.

A method is a unit (``train/<method>/``): a JAX-free ``config`` module with its ``RunArgs`` subclass,
and a ``unit`` module (batches, loss, metrics) that ``load_unit`` imports once a run starts, so that
``--help`` and a bad flag load no JAX. Adding a method is one unit plus one line in ``METHODS``.
Past the command line nothing branches on a method's name: the loop runs whatever unit it is given.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path
from typing import Annotated, Any, NamedTuple, Union

import tyro
import yaml

from ttpa_jax.core.errors import ConfigError
from ttpa_jax.train.config import RunArgs, _config_arg, from_dict, load_yaml
from ttpa_jax.train.dpo.config import DpoArgs
from ttpa_jax.train.orpo.config import OrpoArgs
from ttpa_jax.train.rl.config import GrpoArgs, PpoArgs
from ttpa_jax.train.sft.config import SftArgs


class Method(NamedTuple):
    args: type[RunArgs]
    help: str
    unit: str  # the module whose ``UNIT`` trains it


METHODS: dict[str, Method] = {
    "sft": Method(SftArgs, "Supervised fine-tuning on {messages, tools} records (loss on assistant tokens).",
                  "ttpa_jax.train.sft.unit"),
    "dpo": Method(DpoArgs, "DPO on {prompt, chosen, rejected, tools} preference records (LoRA reference: adapters off).",
                  "ttpa_jax.train.dpo.unit"),
    "orpo": Method(OrpoArgs, "ORPO on {prompt, chosen, rejected, tools} preference records (no reference model).",
                   "ttpa_jax.train.orpo.unit"),
    "grpo": Method(GrpoArgs, "GRPO on the tool-call turns of {messages, tools} records: episodes with tools that run.",
                   "ttpa_jax.train.rl.grpo"),
    "ppo": Method(PpoArgs, "TL-Training's PPO (value head, GAE, KL control) on the tool-call turns of {messages, tools} records.",
                  "ttpa_jax.train.rl.ppo"),
}


def load_unit(cfg: RunArgs):
    """The unit that trains ``cfg``'s method (imports JAX)."""
    return importlib.import_module(METHODS[cfg.objective].unit).UNIT


def method_config(objective: str, **fields) -> RunArgs:
    """The settings of a run of ``objective`` (``train.methods.METHODS``) with the given fields."""
    if objective not in METHODS:
        raise ConfigError(f"unknown training method {objective!r} (known: {', '.join(METHODS)})")
    return METHODS[objective].args(**fields)


def read_run_config(path: str | Path) -> RunArgs:
    """A run's ``RUN_DIR/config.yaml`` (its method named by ``objective``) -> its settings."""
    p = Path(path)
    d = yaml.safe_load(p.read_text()) or {}
    name = d.pop("objective", None)
    if name not in METHODS:
        raise ConfigError(f"{p}: objective {name!r} is not a training method ({', '.join(METHODS)})")
    return from_dict(METHODS[name].args, _known(d, METHODS[name].args), where=str(p))


def _known(d: dict[str, Any], cls: type[RunArgs]) -> dict[str, Any]:
    """The fields of ``d`` that ``cls`` has (a run directory written before each method had its own
    class holds every method's fields)."""
    known = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in known}


def _subcommand_fields(d: dict[str, Any], cls: type[RunArgs], name: str, path: str) -> dict[str, Any]:
    """A YAML config's fields for subcommand ``name``. A run's own ``RUN_DIR/config.yaml`` (``objective``
    and its method's fields) reruns with the subcommand it names; any other file is taken as written."""
    if "objective" not in d:
        return d
    if d["objective"] != name:
        raise ConfigError(f"{path}: written by a `train {d['objective']}` run, not `train {name}`")
    return _known(d, cls)


def _blank(cls: type[RunArgs]) -> RunArgs:
    """``cls`` at its defaults, the fields without a default marked required for tyro."""
    return cls(**{f.name: tyro.MISSING for f in dataclasses.fields(cls)
                  if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING})


def usage() -> str:
    names = "|".join(METHODS)
    return (f"usage: python -m ttpa_jax.train {{{names}}} --model DIR|PRESET --data FILE --out RUN_DIR [flags]\n"
            f"  python -m ttpa_jax.train {{{names}}} --help lists every flag of that subcommand")


def parse_cli(argv: list[str] | None = None) -> RunArgs:
    """``train SUBCOMMAND [--config FILE] [flags]`` -> that method's settings. The YAML file gives
    defaults to the chosen subcommand's dataclass (a field it does not have is an error naming the file)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    yaml_path = _config_arg(argv)
    chosen = argv[0] if argv and argv[0] in METHODS else None
    choices = []
    for name, method in METHODS.items():
        default = _blank(method.args)
        if yaml_path and name == chosen:
            fields = _subcommand_fields(load_yaml(yaml_path), method.args, name, yaml_path)
            default = from_dict(method.args, {**fields, "config": yaml_path}, default, yaml_path)
        choices.append(Annotated[method.args, tyro.conf.subcommand(name, default=default, description=method.help)])
    return tyro.cli(Union[tuple(choices)], args=argv, prog="python -m ttpa_jax.train",  # type: ignore[valid-type]  # noqa: UP007
                    description="Fine-tune a model (LoRA or full); rerun the same command to resume.")
