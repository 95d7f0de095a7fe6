"""Where a model's architecture comes from: a model directory, a config.json, a preset name, or a
base model name / GGUF file (``base_models.resolve_model``), read into ``architecture.ModelConfig``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ttpa_jax.core.errors import ConfigError
from ttpa_jax.model.architecture import ModelConfig
from ttpa_jax.model.base_models import resolve_model

__all__ = ["ConfigError", "ModelConfig", "list_presets", "load_config", "presets_dir"]


def presets_dir() -> Path:
    """The architecture presets (HF-style config.json files): the repository's top-level ``models/``.

    ``model/presets_data`` is a link to that folder in a checkout (and an editable install); the wheel
    holds copies of its files there as package data, so an installed package finds them too.
    """
    return (Path(__file__).resolve().parent / "presets_data").resolve()


def list_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.json"))


def load_config(path_or_preset: str | os.PathLike) -> ModelConfig:
    """A ``ModelConfig`` from a model directory, a config.json path, or a preset name."""
    p = Path(resolve_model(path_or_preset))
    if p.is_dir():
        p = p / "config.json"
        if not p.is_file():
            raise ConfigError(f"{p}: missing config.json in the model directory")
    elif not p.is_file():
        preset = presets_dir() / f"{path_or_preset}.json"
        if not preset.is_file():
            raise ConfigError(
                f"{path_or_preset}: not a model directory, a config.json, or a preset "
                f"(presets: {', '.join(list_presets())})"
            )
        p = preset
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: invalid JSON ({e.msg}, line {e.lineno})") from None
    return ModelConfig.from_hf_dict(d, source=str(p))
