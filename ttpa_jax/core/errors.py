"""Errors a user causes, as one family: ``UserError`` and the kinds the stages raise.

A ``UserError`` is something the user has to fix (a bad path, a malformed JSONL line, a setting out
of range, a checkpoint that does not match its config, an endpoint that refuses every request). Its
message names the file, line or field and says why, on one line; every stage's CLI
(``ttpa_jax.core.cli``) prints it as ``error: <message>`` and exits with code 2, without a traceback.
Anything else escaping a stage is a bug and keeps its traceback. Subclasses live next to the code
that raises them (``DataError`` in ``core.jsonl``, ``CheckpointError`` in ``model.hf_io``,
``EndpointError`` in ``construct.generators.protocol``, ``BFCLNotInstalled`` in ``evaluate.bfcl``);
``ConfigError`` is shared by every stage's settings, so it is defined here.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem the user must fix; the message names the file, line or field and the reason."""


class ConfigError(UserError):
    """A setting (a flag, a YAML field, a config.json field) that must change; the message says which and why."""
