"""Audit plots: the per-device epsilon distribution, and membership-inference ROC curves (log scale)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedrec.simulations.plots import plt

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def epsilon_histogram(per_arm: dict[str, dict], path: Path) -> Path:
    """Claimed (ledger) and recomputed per-device epsilon of every DP arm."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for arm, values in per_arm.items():
        claimed, recomputed = np.asarray(values["claimed"]), np.asarray(values["recomputed"])
        bins = np.histogram_bin_edges(np.concatenate([claimed, recomputed]), bins=30).tolist()
        ax.hist(claimed, bins=bins, alpha=0.6, label=f"{arm}: ledger (opacus)")
        ax.hist(recomputed, bins=bins, histtype="step", linewidth=1.5, label=f"{arm}: recomputed (dp_accounting)")
    return _save(fig, ax, path, "record-level epsilon per device", "devices", "privacy spent per device")


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    """``curves``: label -> (member scores, non-member scores); log-log axes show the low-FPR regime."""
    fig, ax = plt.subplots(figsize=(5, 4.4))
    for label, (members, non_members) in curves.items():
        thresholds = np.unique(np.concatenate([members, non_members]))[::-1]
        fpr = 1 - np.searchsorted(np.sort(non_members), thresholds, side="left") / len(non_members)
        tpr = 1 - np.searchsorted(np.sort(members), thresholds, side="left") / len(members)
        ax.plot(np.maximum(fpr, 1e-4), np.maximum(tpr, 1e-4), label=label)
    ax.plot([1e-4, 1], [1e-4, 1], "k:", linewidth=1, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    return _save(fig, ax, path, "false positive rate", "true positive rate", "membership inference (ROC)")


def _save(fig: Figure, ax: Axes, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
