"""Survival curves (share of users still coming back on or after day t), one PNG per user model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedrec.simulations.plots import plt
from fedrec.simulations.retention.engine import GREEDY


def survival_png(
    curves: dict[str, dict[str, np.ndarray]], observed: list[float], n_observed: int, oracle: str, path: Path
) -> Path:
    """curves: arm -> beta -> mean survival over seeds (day 0..horizon)."""
    betas = sorted(next(iter(curves.values())), key=float)
    cols = min(2, len(betas))
    rows = -(-len(betas) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), sharey=True, squeeze=False)
    for ax, beta in zip(axes.ravel(), betas):
        for arm, by_beta in curves.items():
            style = {"linestyle": "--", "color": "grey"} if arm == GREEDY else {}
            ax.plot(np.arange(1, len(by_beta[beta])), by_beta[beta][1:], label=arm, linewidth=1.4, **style)
        if observed:
            ax.plot(
                np.arange(1, len(observed)),
                observed[1:],
                color="black",
                linestyle=":",
                linewidth=1.6,
                label=f"observed (data, {n_observed} users)",
            )
        ax.set_title(f"user model {oracle}, beta {beta} (simulated)")
        ax.set_xlabel("day t since first visit (everyone visits on day 0)")
        ax.set_ylabel("share with a visit on day >= t")
        ax.grid(alpha=0.3)
    axes.ravel()[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
