"""What the trained baselines (BPR-MF, Mult-VAE) share: early stopping on validation NDCG@10, and the
choice of a setting from a grid by the same number (the test item is never looked at)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from fedrec.common.errors import FedrecError
from fedrec.common.metrics import full_ranks, hit_ndcg
from fedrec.common.split import Split
from fedrec.simulations.arms.base import ArmResult
from fedrec.simulations.arms.centralized import torch_threads

S = TypeVar("S")


class EarlyStopping:
    """Validation NDCG@10 epoch by epoch; keeps the best epoch's scores."""

    def __init__(self, split: Split, seed: int, patience: int):
        self.split, self.seed, self.patience = split, seed, patience
        self.curve: list[float] = []
        self.scores: np.ndarray | None = None

    def stop_after(self, scores: np.ndarray) -> bool:
        """Record this epoch's scores; True once ``patience`` epochs have passed without a better one."""
        _, ndcg = hit_ndcg(full_ranks(scores, self.split, "validation", self.seed))
        improved = not self.curve or ndcg > self.best  # the first of equal epochs is kept
        self.curve.append(ndcg)
        if improved:
            self.scores = scores.copy()
            return False
        return len(self.curve) - 1 - int(np.argmax(self.curve)) >= self.patience

    @property
    def best(self) -> float:
        return max(self.curve)


def choose_on_validation(
    name: str,
    grid: Sequence[S],
    train: Callable[[S], EarlyStopping],
    label: Callable[[S], str],
    chosen: Callable[[S], dict],
) -> ArmResult:
    """Train every setting of ``grid`` (one torch thread), keep the one with the best validation NDCG@10
    (the first of equals); its scores, what it chose and every setting's number."""
    by_setting: dict[str, float] = {}
    best: tuple[S, EarlyStopping] | None = None
    with torch_threads(1):
        for setting in grid:
            run = train(setting)
            by_setting[label(setting)] = run.best
            if best is None or run.best > best[1].best:
                best = (setting, run)
    if best is None or best[1].scores is None:
        raise FedrecError(f"{name}: no setting to choose from")
    setting, run = best
    scores = best[1].scores
    info = {
        **chosen(setting),
        "epochs": int(np.argmax(run.curve)) + 1,
        "validation_ndcg@10_by_setting": by_setting,
        "validation_curve": run.curve,
    }
    return ArmResult(name, scores.astype(np.float32), info)
