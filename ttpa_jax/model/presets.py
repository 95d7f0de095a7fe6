"""``python -m ttpa_jax.models``: list the architecture presets in ``models/`` with their size.

Parameter counts come from the abstract model (``nnx.eval_shape``): nothing is allocated, so a 14B
preset is listed as fast as a tiny one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import tyro

from ttpa_jax.core.cli import run, stage_main
from ttpa_jax.model.config import list_presets, load_config, presets_dir


@dataclasses.dataclass
class Args:
    """List architecture presets with parameter count and bf16 weight size."""

    json: bool = False
    """Print JSON instead of a table."""


def preset_sizes() -> list[dict]:
    from ttpa_jax.model.transformer import abstract_model, count_params  # JAX: only to count; --help loads none

    rows = []
    for name in list_presets():
        cfg = load_config(name)
        n = count_params(abstract_model(cfg))
        rows.append({
            "preset": name, "model_type": cfg.model_type, "layers": cfg.num_hidden_layers,
            "hidden": cfg.hidden_size, "params": n, "bf16_bytes": 2 * n, "tied": cfg.tie_word_embeddings,
        })
    return rows


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "B", "T"):
        if abs(n) < 1000:
            return f"{n:.1f}{suffix}{unit}" if suffix else f"{int(n)}{unit}"
        n /= 1000
    return f"{n:.1f}P{unit}"


@stage_main
def main(argv: Sequence[str] | None = None) -> int:
    args = tyro.cli(Args, args=argv, prog="python -m ttpa_jax.models")
    rows = preset_sizes()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"presets in {presets_dir()}\n")
    print(f"{'preset':<16}{'type':<8}{'layers':>7}{'hidden':>8}{'params':>10}{'bf16 weights':>14}  tied")
    for r in rows:
        gib = r["bf16_bytes"] / 1024**3
        size = f"{gib:.2f} GiB" if gib >= 0.01 else f"{r['bf16_bytes'] / 1024**2:.2f} MiB"
        print(f"{r['preset']:<16}{r['model_type']:<8}{r['layers']:>7}{r['hidden']:>8}{_human(r['params']):>10}{size:>14}  {r['tied']}")


    return 0


if __name__ == "__main__":
    run(main)
