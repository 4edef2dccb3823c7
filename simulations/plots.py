"""Plots for reports (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def accuracy_bars(arms: dict[str, dict], path: Path, metrics: Sequence[str] = ("hr@10", "ndcg@10")) -> Path:
    """One bar per arm and metric, with the 95% interval where several seeds ran."""
    names = list(arms)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6))
    for ax, metric in zip(axes, metrics):
        means = [arms[n]["accuracy"][metric] for n in names]
        errs = []
        for n in names:
            ci = arms[n].get("accuracy_ci95", {}).get(metric, {}).get("ci95")
            errs.append(0.0 if not ci else (ci[1] - ci[0]) / 2)
        ax.bar(names, means, yerr=errs, capsize=4, color="#4C72B0")
        ax.set_title(f"full-ranking {metric.upper()} (test)")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves(series: dict[str, tuple[list, list]], path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
