"""A run's report: the fine-grained metrics table, training curves and a per-metric comparison plot.

``write_report`` writes ``RUN_DIR/report.md`` and ``RUN_DIR/report.png`` (matplotlib, no display).
"""

from __future__ import annotations

import json
from pathlib import Path

from ttpa_jax.evaluate.metrics import format_table

# Metrics plotted side by side (higher is better for all of them).
COMPARED = ("tool_selection_accuracy", "param_name_accuracy", "param_value_accuracy", "return_value_accuracy",
            "format_validity", "esm_score")


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def metric_value(result: dict, key: str) -> float:
    v = result.get(key)
    return float(v) if isinstance(v, (int, float)) else float("nan")


def plot(path: Path, curves: dict[str, list[dict]], results: dict[str, dict]) -> Path:
    import matplotlib  # deferred: matplotlib only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: matplotlib only when plotting

    panels = [(name, rows) for name, rows in curves.items() if rows]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(5 * (len(panels) + 1), 4))
    for ax, (name, rows) in zip(axes, panels):
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["loss"] for r in rows], label="loss")
        if "rewards/margins" in rows[0]:
            ax.plot(steps, [r["rewards/margins"] for r in rows], label="rewards/margins")
            ax.plot(steps, [r["rewards/accuracies"] for r in rows], label="rewards/accuracies")
        ax.set_title(f"{name} training")
        ax.set_xlabel("step")
        ax.legend()
    ax = axes[-1]
    width = 0.8 / max(len(results), 1)
    for i, (system, result) in enumerate(results.items()):
        xs = [j + i * width for j in range(len(COMPARED))]
        ax.bar(xs, [metric_value(result, k) for k in COMPARED], width=width, label=system)
    ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(COMPARED))])
    ax.set_xticklabels([k.removesuffix("_accuracy").replace("_", "\n") for k in COMPARED], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("held-out evaluation")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(run_dir: Path, results: dict[str, dict], curves: dict[str, list[dict]], notes: list[str]) -> Path:
    run_dir = Path(run_dir)
    png = plot(run_dir / "report.png", curves, results)
    lines = ["# ttpa-jax demo report", "", *notes, "", "## Held-out evaluation (tools never seen in training)", "",
             format_table(results), "", f"![training curves and metrics]({png.name})", ""]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out
