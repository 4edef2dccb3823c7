"""BPR-MF (Rendle et al. 2009): user and item factors trained on pairwise ranking, one negative per train
interaction drawn from the items the user has no train interaction with (train split only), Adam, early
stopping on validation NDCG@10; the factor size, L2 weight and learning rate chosen on validation too."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedrec.common.split import Split
from fedrec.simulations.arms.base import ArmBinding, ArmResult, Fitter
from fedrec.simulations.arms.validation import EarlyStopping, choose_on_validation


@dataclass(frozen=True)
class BprSetting:
    dim: int = 64
    l2: float = 1e-4
    lr: float = 5e-3
    epochs: int = 100
    patience: int = 5
    batch_size: int = 1024


GRID = tuple(BprSetting(dim=64, l2=l2, lr=lr) for l2 in (1e-5, 1e-4, 1e-3) for lr in (2e-3, 1e-2))


def train_keys(split: Split) -> np.ndarray:
    """Every (user, item) pair of train as one sorted key, for ``negatives``."""
    return np.sort(split.train_users * split.n_items + split.train_items)


def negatives(
    split: Split, users: np.ndarray, rng: np.random.Generator, taken: np.ndarray, tries: int = 20
) -> np.ndarray:
    """An item per user with no train interaction of that user (``taken``: ``train_keys``; uniform,
    redrawn where it collides)."""
    items = rng.integers(0, split.n_items, size=len(users))
    for _ in range(tries):
        keys = users * split.n_items + items
        pos = np.minimum(np.searchsorted(taken, keys), len(taken) - 1)
        clash = taken[pos] == keys
        if not clash.any():
            break
        items[clash] = rng.integers(0, split.n_items, size=int(clash.sum()))
    return items


def train_bpr(split: Split, seed: int, s: BprSetting) -> EarlyStopping:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    taken = train_keys(split)
    users_t = torch.nn.Embedding(split.n_users, s.dim)
    items_t = torch.nn.Embedding(split.n_items, s.dim)
    for table in (users_t, items_t):
        torch.nn.init.normal_(table.weight, std=0.1)
    opt = torch.optim.Adam([users_t.weight, items_t.weight], lr=s.lr)
    stopping = EarlyStopping(split, seed, s.patience)
    for _ in range(s.epochs):
        order = rng.permutation(len(split.train_users))
        neg = negatives(split, split.train_users[order], rng, taken)
        for start in range(0, len(order), s.batch_size):
            rows = order[start : start + s.batch_size]
            u = torch.from_numpy(split.train_users[rows])
            i = torch.from_numpy(split.train_items[rows])
            j = torch.from_numpy(neg[start : start + s.batch_size])
            pu, qi, qj = users_t(u), items_t(i), items_t(j)
            margin = (pu * (qi - qj)).sum(1)
            loss = -torch.nn.functional.logsigmoid(margin).mean()
            loss = loss + s.l2 * (pu.pow(2).sum() + qi.pow(2).sum() + qj.pow(2).sum()) / len(rows)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            scores = (users_t.weight @ items_t.weight.T).numpy()
        if stopping.stop_after(scores):
            break
    return stopping


def fit_bpr(split: Split, seed: int, grid: tuple[BprSetting, ...] = GRID) -> ArmResult:
    return choose_on_validation(
        "bpr",
        grid,
        lambda setting: train_bpr(split, seed, setting),
        lambda setting: f"dim={setting.dim},l2={setting.l2:g},lr={setting.lr:g}",
        lambda setting: {"dim": setting.dim, "l2": setting.l2, "lr": setting.lr},
    )


def bind_bpr(binding: ArmBinding) -> Fitter:
    return fit_bpr
