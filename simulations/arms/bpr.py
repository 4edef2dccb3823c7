"""BPR-MF (Rendle et al. 2009): user and item factors trained on pairwise ranking, one negative per train
interaction drawn from the items the user has no train interaction with (train split only), Adam, early
stopping on validation NDCG@10; the factor size, L2 weight and learning rate chosen on validation too."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedrec.common.errors import FedrecError
from fedrec.common.metrics import full_ranks, hit_ndcg
from fedrec.common.split import Split
from fedrec.simulations.arms.base import ArmBinding, ArmResult, Fitter
from fedrec.simulations.arms.centralized import torch_threads


@dataclass(frozen=True)
class BprSetting:
    dim: int = 64
    l2: float = 1e-4
    lr: float = 5e-3
    epochs: int = 100
    patience: int = 5
    batch_size: int = 1024


GRID = tuple(BprSetting(dim=64, l2=l2, lr=lr) for l2 in (1e-5, 1e-4, 1e-3) for lr in (2e-3, 1e-2))


def negatives(split: Split, users: np.ndarray, rng: np.random.Generator, tries: int = 20) -> np.ndarray:
    """An item per user with no train interaction of that user (uniform; redrawn where it collides)."""
    train = np.sort(split.train_users * split.n_items + split.train_items)
    items = rng.integers(0, split.n_items, size=len(users))
    for _ in range(tries):
        keys = users * split.n_items + items
        pos = np.minimum(np.searchsorted(train, keys), len(train) - 1)
        clash = train[pos] == keys
        if not clash.any():
            break
        items[clash] = rng.integers(0, split.n_items, size=int(clash.sum()))
    return items


def train_bpr(split: Split, seed: int, s: BprSetting) -> tuple[np.ndarray, float, list[float]]:
    """The best validation epoch's scores, its NDCG@10 and the curve."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    users_t = torch.nn.Embedding(split.n_users, s.dim)
    items_t = torch.nn.Embedding(split.n_items, s.dim)
    for table in (users_t, items_t):
        torch.nn.init.normal_(table.weight, std=0.1)
    opt = torch.optim.Adam([users_t.weight, items_t.weight], lr=s.lr)
    best: tuple[float, np.ndarray | None] = (-1.0, None)
    curve: list[float] = []
    for _ in range(s.epochs):
        order = rng.permutation(len(split.train_users))
        neg = negatives(split, split.train_users[order], rng)
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
        _, ndcg = hit_ndcg(full_ranks(scores, split, "validation", seed))
        curve.append(ndcg)
        if ndcg > best[0]:
            best = (ndcg, scores.copy())
        elif len(curve) - 1 - int(np.argmax(curve)) >= s.patience:
            break
    assert best[1] is not None
    return best[1], best[0], curve


def fit_bpr(split: Split, seed: int, grid: tuple[BprSetting, ...] = GRID) -> ArmResult:
    by_setting: dict[str, float] = {}
    best = None  # (validation NDCG@10, setting, scores, curve) of the best so far; the first of equals
    with torch_threads(1):
        for setting in grid:
            scores, ndcg, curve = train_bpr(split, seed, setting)
            by_setting[f"dim={setting.dim},l2={setting.l2:g},lr={setting.lr:g}"] = ndcg
            if best is None or ndcg > best[0]:
                best = (ndcg, setting, scores, curve)
    if best is None:
        raise FedrecError("bpr: no setting to choose from")
    _, setting, scores, curve = best
    info = {
        "dim": setting.dim,
        "l2": setting.l2,
        "lr": setting.lr,
        "epochs": int(np.argmax(curve)) + 1,
        "validation_ndcg@10_by_setting": by_setting,
        "validation_curve": curve,
    }
    return ArmResult("bpr", scores.astype(np.float32), info)


def bind_bpr(binding: ArmBinding) -> Fitter:
    return fit_bpr
