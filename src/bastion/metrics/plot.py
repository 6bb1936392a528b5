"""A PNG of the global model's validation metric per round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bastion.errors import MissingDependency
from bastion.metrics.log import round_summaries


def metric_series(records: list[dict[str, Any]], task: str, metric: str) -> list[tuple[int, float]]:
    """(model round, value) pairs: global validation in round r measures the model of round r-1."""
    series = []
    for summary in round_summaries(records):
        value = summary.get("tasks", {}).get(task, {}).get(metric)
        if value is not None:
            series.append((int(summary.get("model_round", summary["round"] - 1)), float(value)))
    return series


def plot_metric(series: list[tuple[int, float]], path: Path, title: str, metric: str) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError as exc:
        raise MissingDependency("matplotlib", "plot", "plotting metrics") from exc
    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    rounds = [r for r, _ in series]
    values = [v for _, v in series]
    axis.plot(rounds, values, marker="o")
    for r, v in series:
        axis.annotate(
            f"{v:.3f}", (r, v), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8
        )
    axis.set_xlabel("round (0 = initial model)")
    axis.set_ylabel(metric)
    axis.set_title(title)
    axis.set_xticks(rounds)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
