"""Pieces of NeuMF training shared by the centralized arm and the device client."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedrec.common.recommender import Recommender
from fedrec.common.sampling import sample_negatives
from fedrec.common.settings import MAX_BATCH, MAX_NEGATIVES, MAX_PROCESSES, require, require_count


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; the same names appear in the TOML config and in reports."""

    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    negatives: int = 4
    weight_decay: float = 0.0
    patience: int = 5
    lr_decay: float = 1.0  # multiplicative per epoch (1.0 = constant)
    emb_l2: float = 0.0  # L2 on the embedding rows a batch touches, per example (frequency-aware)
    recent_last: int = 0  # each user's most recent positives that get repeated every epoch ...
    recent_repeats: int = 0  # ... this many extra times (0 = every positive once: plain NeuMF training)
    pretrain: bool = False  # NeuMF starts from a GMF-only and an MLP-only model trained first (He et al.)
    refit: bool = False  # after early stopping, retrain on train+validation for the best epoch count
    threads: int = 1  # torch intra-op threads for the centralized fit (0 = torch's default); 1 leaves the
    # other core to the federated arms it runs beside (simulation.background_central)

    def __post_init__(self) -> None:
        for name in ("epochs", "patience"):
            require_count(getattr(self, name), name)
        require_count(self.batch_size, "batch_size", high=MAX_BATCH)
        require_count(self.negatives, "negatives", high=MAX_NEGATIVES)
        for name in ("recent_last", "recent_repeats"):
            require_count(getattr(self, name), name, low=0)
        require_count(self.threads, "threads", low=0, high=MAX_PROCESSES)
        for name in ("weight_decay", "emb_l2"):
            require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(0.0 < self.lr_decay <= 1.0, "lr_decay", f"must be in (0, 1], got {self.lr_decay}")


def with_negatives(
    users: np.ndarray, items: np.ndarray, keys: np.ndarray, n_items: int, negatives: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each positive plus ``negatives`` freshly drawn non-positives of the same user, labels 1/0."""
    neg_users = np.repeat(users, negatives)
    neg_items = sample_negatives(neg_users, keys, n_items, rng)
    u = np.concatenate([users, neg_users])
    i = np.concatenate([items, neg_items])
    y = np.concatenate([np.ones(len(users), np.float32), np.zeros(len(neg_users), np.float32)])
    return u, i, y


def recency_oversample(users: np.ndarray, timestamps: np.ndarray, last: int, repeats: int) -> np.ndarray:
    """Indices of one epoch's positives: all once, each user's ``last`` most recent ``repeats`` more times.

    Under the temporal split the next item follows the latest ones most closely: weighting them up is the
    one documented change to NeuMF's loss (a positive and its sampled negatives count several times).
    Ties in time keep the given order (the split's seeded tie-break).
    """
    index = np.arange(len(users))
    if last <= 0 or repeats <= 0:
        return index
    order = np.lexsort((index, timestamps, users))  # per user, oldest first
    counts = np.bincount(users, minlength=int(users.max()) + 1)
    ends = np.cumsum(counts)
    from_end = ends[users[order]] - 1 - np.arange(len(order))  # 0 = the user's most recent positive
    recent = order[from_end < last]
    return np.concatenate([index, np.tile(recent, repeats)])


def embedding_l2(model: Recommender, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Per-example squared norm of the user and item rows a batch uses (not for Opacus: a second lookup)."""
    return model.user_emb(users).pow(2).sum(-1) + model.item_emb(items).pow(2).sum(-1)


def per_example_bce() -> nn.Module:
    """reduction='none' gives one loss per example, which Opacus' ghost clipping needs."""
    return nn.BCEWithLogitsLoss(reduction="none")


class GroupBCE(nn.Module):
    """BCE summed over a [positive, negatives] group: one loss per example, as ghost clipping needs."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_example = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").sum(dim=-1)
        if self.reduction == "none":
            return per_example
        return per_example.sum() if self.reduction == "sum" else per_example.mean()
