"""Centralized NeuMF: the non-private upper reference every federated arm is measured against."""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
import torch

from fedrec.common.config import CentralConfig
from fedrec.common.metrics import full_ranks, hit_ndcg, sampled_ranks
from fedrec.common.model import ModelConfig, NeuMF, build_model, from_pretrained
from fedrec.common.recommender import Recommender
from fedrec.common.sampling import positive_keys
from fedrec.common.settings import to_nested
from fedrec.common.split import Split
from fedrec.common.training import TrainConfig, embedding_l2, per_example_bce, recency_oversample, with_negatives
from fedrec.simulations.arms.base import ArmBinding, ArmResult, Fitter
from fedrec.simulations.progress import Bar, progress


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Pin intra-op threads for one fit and restore the caller's setting (0 keeps torch's default)."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def model_scores(model: Recommender) -> np.ndarray:
    return model.score_users(torch.arange(model.n_users)).numpy()


def train_with_validation(split: Split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train positives plus each user's validation item (users, items, timestamps): the final refit's data."""
    has = np.flatnonzero(split.val_items >= 0)
    return (
        np.concatenate([split.train_users, has]),
        np.concatenate([split.train_items, split.val_items[has]]),
        np.concatenate([split.train_timestamps, split.val_timestamps[has]]),
    )


def train_epoch(
    model: Recommender,
    optimizer: torch.optim.Optimizer,
    users: np.ndarray,
    items: np.ndarray,
    keys: np.ndarray,
    cfg: TrainConfig,
    rng: np.random.Generator,
) -> float:
    """One pass over the positives with fresh negatives; returns mean BCE."""
    u, i, y = with_negatives(users, items, keys, model.n_items, cfg.negatives, rng)
    order = rng.permutation(len(u))
    u_t, i_t, y_t = (torch.from_numpy(a[order]) for a in (u, i, y))
    loss_fn = per_example_bce()
    model.train()
    total = 0.0
    for start in range(0, len(order), cfg.batch_size):
        sl = slice(start, start + cfg.batch_size)
        optimizer.zero_grad(set_to_none=True)
        bce = loss_fn(model(u_t[sl], i_t[sl]), y_t[sl]).mean()
        loss = bce + cfg.emb_l2 * embedding_l2(model, u_t[sl], i_t[sl]).mean() if cfg.emb_l2 > 0 else bce
        loss.backward()
        optimizer.step()
        total += bce.item() * len(u_t[sl])
    return total / len(order)


def central_optimizer(
    model: Recommender, cfg: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam, fused: one kernel per step instead of a loop over the parameters (bench/centralized_adam.py)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    return optimizer, torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_decay)


def _train(
    model: Recommender,
    users: np.ndarray,
    items: np.ndarray,
    stamps: np.ndarray,
    cfg: TrainConfig,
    seed: int,
    bar: Bar,
    label: str,
    split: Split,
    epochs: int | None = None,
) -> tuple[Recommender, dict]:
    """Train ``model`` on the given positives.

    With ``epochs=None``: up to ``cfg.epochs``, keeping the epoch with the best validation NDCG@10 (full
    ranking) and stopping after ``cfg.patience`` epochs without improvement. Otherwise exactly ``epochs``
    epochs, no validation (the refit on train+validation, which has nothing left to validate on).
    """
    rng = np.random.default_rng(seed)
    optimizer, scheduler = central_optimizer(model, cfg)
    keys = positive_keys(users, items, model.n_items)
    epoch_rows = recency_oversample(users, stamps, cfg.recent_last, cfg.recent_repeats)
    users, items = users[epoch_rows], items[epoch_rows]
    validate = epochs is None
    n_epochs = cfg.epochs if epochs is None else epochs
    best_ndcg, best_epoch, stale = -1.0, 0, 0
    best_state: dict[str, Any] | None = None
    curve: list[dict[str, float]] = []
    epoch_times: list[float] = []
    task = bar.add_task(label, total=n_epochs)
    for epoch in range(1, n_epochs + 1):
        t0 = time.perf_counter()
        loss = train_epoch(model, optimizer, users, items, keys, cfg, rng)
        epoch_times.append(time.perf_counter() - t0)
        scheduler.step()
        if not validate:
            bar.update(task, advance=1, description=f"{label}  loss {loss:.4f}")
            continue
        scores = model_scores(model)
        hr, ndcg = hit_ndcg(full_ranks(scores, split, "validation", seed))
        hr_sampled, _ = hit_ndcg(sampled_ranks(scores, split, "validation", seed))
        curve.append(
            {"epoch": epoch, "loss": loss, "val_hr@10": hr, "val_ndcg@10": ndcg, "val_hr@10_sampled": hr_sampled}
        )
        bar.update(task, advance=1, description=f"{label}  loss {loss:.4f}  val NDCG@10 {ndcg:.4f}")
        if ndcg > best_ndcg:
            best_ndcg, best_state, best_epoch, stale = ndcg, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    info: dict[str, Any] = {"epoch_s_mean": float(np.mean(epoch_times)), "epochs_run": len(epoch_times)}
    if validate:
        assert best_state is not None, "the first validated epoch always beats -1.0"
        model.load_state_dict(best_state)
        best = curve[best_epoch - 1]
        info.update(
            {
                "best_epoch": best_epoch,
                "val_ndcg@10": best_ndcg,
                "val_hr@10": best["val_hr@10"],
                "val_hr@10_sampled": best["val_hr@10_sampled"],
                "curve": curve,
            }
        )
    return model, info


def _recipe(
    split: Split,
    seed: int,
    config: CentralConfig,
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
    bar: Bar,
    epochs: dict[str, int] | None = None,
) -> tuple[Recommender, dict[str, dict]]:
    """NeuMF from random init, or (``pretrain``) from a GMF-only and an MLP-only model trained first.

    ``epochs`` None: early stopping for every stage; else the per-stage epoch counts found that way.
    """
    cfg, model_cfg = config.train, config.model
    infos: dict[str, dict] = {}

    def stage(name: str, cfg_m: ModelConfig, init: Recommender | None = None) -> Recommender:
        torch.manual_seed(seed)
        model = init if init is not None else build_model(split.n_users, split.n_items, cfg_m)
        shown = cfg_m.kind.rpartition(":")[2] if cfg_m.custom else name  # a model of one's own by its class
        model, infos[name] = _train(
            model, *data, cfg, seed, bar, f"centralized {shown}", split, None if epochs is None else epochs[name]
        )
        return model

    init = None
    if cfg.pretrain and model_cfg.kind == "neumf":
        gmf = stage("gmf", dataclasses.replace(model_cfg, kind="gmf"))
        mlp = stage("mlp", dataclasses.replace(model_cfg, kind="mlp"))
        assert isinstance(gmf, NeuMF) and isinstance(mlp, NeuMF)  # the built-in kinds build NeuMF
        init = from_pretrained(gmf, mlp, model_cfg)
    return stage("neumf", model_cfg, init), infos


def fit_centralized(split: Split, seed: int, config: CentralConfig = CentralConfig(), show: bool = True) -> ArmResult:
    """Adam + BCE with sampled negatives; early stopping on validation NDCG@10, optionally a final refit."""
    cfg = config.train
    t0 = time.perf_counter()
    with torch_threads(cfg.threads), progress(show) as bar:
        train = (split.train_users, split.train_items, split.train_timestamps)
        model, stages = _recipe(split, seed, config, train, bar)
        if cfg.refit:
            epochs = {name: info["best_epoch"] for name, info in stages.items()}
            model, _ = _recipe(split, seed, config, train_with_validation(split), bar, epochs)
        scores = model_scores(model)
    final = stages["neumf"]
    info = {
        "model": to_nested(config.model),
        "train": to_nested(cfg),
        **final,
        "epoch_s_mean": float(np.mean([s["epoch_s_mean"] for s in stages.values()])),
        "pretrain": {
            name: {k: v for k, v in s.items() if k != "curve"} for name, s in stages.items() if name != "neumf"
        },
        "train_s": time.perf_counter() - t0,
    }
    result = ArmResult("centralized", scores, info)
    result.model = model  # type: ignore[attr-defined]
    return result


def bind(binding: ArmBinding) -> Fitter:
    """A partial of a module-level function, so that the fitter pickles into a background process."""
    return partial(fit_centralized, config=binding.settings, show=binding.show)
