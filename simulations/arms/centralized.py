"""Centralized NeuMF: the non-private upper reference every federated arm is measured against."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from common.metrics import full_ranks, hit_ndcg
from common.model import ModelConfig, NeuMF
from common.sampling import positive_keys
from common.split import Split
from common.training import TrainConfig, per_example_bce, with_negatives
from simulations.arms.base import ArmResult
from simulations.progress import progress


@dataclass(frozen=True)
class CentralConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def model_scores(model: NeuMF) -> np.ndarray:
    return model.score_users(torch.arange(model.n_users)).numpy()


def train_epoch(model: NeuMF, optimizer: torch.optim.Optimizer, split: Split, keys: np.ndarray,
                cfg: TrainConfig, rng: np.random.Generator) -> float:
    """One pass over train positives with fresh negatives; returns mean loss."""
    u, i, y = with_negatives(split.train_users, split.train_items, keys, split.n_items, cfg.negatives, rng)
    order = rng.permutation(len(u))
    u_t, i_t, y_t = (torch.from_numpy(a[order]) for a in (u, i, y))
    loss_fn = per_example_bce()
    model.train()
    total = 0.0
    for start in range(0, len(order), cfg.batch_size):
        sl = slice(start, start + cfg.batch_size)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(u_t[sl], i_t[sl]), y_t[sl]).mean()
        loss.backward()
        optimizer.step()
        total += float(loss) * len(u_t[sl])
    return total / len(order)


def fit_centralized(split: Split, seed: int, config: CentralConfig = CentralConfig(), show: bool = True) -> ArmResult:
    """Adam + BCE with sampled negatives; early stopping on validation NDCG@10 (full ranking)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = config.train
    model = NeuMF(split.n_users, split.n_items, config.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_decay)
    keys = positive_keys(split.train_users, split.train_items, split.n_items)
    best_ndcg, best_state, best_epoch, stale = -1.0, None, 0, 0
    curve, epoch_times = [], []
    with progress(show) as bar:
        task = bar.add_task("centralized NeuMF", total=cfg.epochs)
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            loss = train_epoch(model, optimizer, split, keys, cfg, rng)
            epoch_times.append(time.perf_counter() - t0)
            scheduler.step()
            _, ndcg = hit_ndcg(full_ranks(model_scores(model), split, "validation", seed))
            curve.append({"epoch": epoch, "loss": loss, "val_ndcg@10": ndcg})
            bar.update(task, advance=1, description=f"centralized NeuMF  loss {loss:.4f}  val NDCG@10 {ndcg:.4f}")
            if ndcg > best_ndcg:
                best_ndcg, best_state, best_epoch, stale = ndcg, copy.deepcopy(model.state_dict()), epoch, 0
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
    model.load_state_dict(best_state)
    info = {
        "model": config.model.to_dict(),
        "train": cfg.to_dict(),
        "best_epoch": best_epoch,
        "val_ndcg@10": best_ndcg,
        "curve": curve,
        "epoch_s_mean": float(np.mean(epoch_times)),
    }
    result = ArmResult("centralized", model_scores(model), info)
    result.model = model  # type: ignore[attr-defined]
    return result
