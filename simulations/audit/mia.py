"""Membership inference on the final models: is a (user, item) pair in the training data?

Members are each user's latest train interaction; non-members are the users' test interactions, which
no arm ever trains on (the centralized refit adds validation, never test). Both sets hold the same users,
so a per-user score offset cannot separate them, and they are matched in time: between a user's member
and non-member lies only the validation interaction, so an attack cannot win by telling old from recent
(a model's drift toward recent taste would otherwise pass for memorization).

Attack 1 (loss threshold, Yeom et al. 2018): lower loss on the pair = member.
Attack 2 (LiRA, Carlini et al. 2022): shadow copies of the centralized arm, each trained on all other
train interactions plus a random half of the candidates (every candidate is "in" for exactly half of the
shadows); per candidate, Gaussians fitted to the shadows' in and out scores turn the target's score into
a likelihood ratio. Scores are standardised per model so that shadows transfer to models of another
scale (the federated arms); with few shadows the variances are pooled over candidates (fixed-variance
LiRA).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fedrec.common.config import CentralConfig
from fedrec.common.model import build_model
from fedrec.common.sampling import positive_keys
from fedrec.common.split import Split
from fedrec.common.training import TrainConfig
from fedrec.simulations.arms.centralized import torch_threads, train_epoch
from fedrec.simulations.audit.attack_metrics import attack_summary


@dataclass(frozen=True)
class Candidates:
    users: np.ndarray
    items: np.ndarray
    member: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.users)


def mia_candidates(split: Split, seed: int, max_users: int | None = None) -> Candidates:
    """The latest train pair (member) and the test pair (non-member) of each user who has both; ``seed``
    draws the ``max_users`` users when there are more."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(split.train_users, minlength=split.n_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    by_time = np.lexsort((split.train_timestamps, split.train_users))  # user blocks, each in time order
    keys = positive_keys(split.train_users, split.train_items, split.n_items)
    users = np.flatnonzero((counts > 0) & (split.test_items >= 0))
    test_keys = users * split.n_items + split.test_items[users]
    users = users[~np.isin(test_keys, keys)]  # a test pair also seen in train would be a member
    if max_users is not None and len(users) > max_users:
        users = np.sort(rng.choice(users, max_users, replace=False))
    picks = by_time[starts[users] + counts[users] - 1]
    return Candidates(
        users=np.concatenate([split.train_users[picks], users]),
        items=np.concatenate([split.train_items[picks], split.test_items[users]]),
        member=np.concatenate([np.ones(len(users), bool), np.zeros(len(users), bool)]),
    )


def pair_logits(scores: np.ndarray, cands: Candidates) -> np.ndarray:
    return scores[cands.users, cands.items].astype(np.float64)


def keep_matrix(n_shadows: int, n_candidates: int, seed: int) -> np.ndarray:
    """[n_shadows, n_candidates]: each candidate is in exactly half of the shadows."""
    if n_shadows < 2 or n_shadows % 2:
        raise ValueError(f"LiRA needs an even number of shadows >= 2, got {n_shadows}")
    rng = np.random.default_rng(seed)
    ranks = np.argsort(rng.random((n_shadows, n_candidates)), axis=0)
    return ranks < n_shadows // 2


def train_shadow(
    split: Split, cands: Candidates, keep: np.ndarray, config: CentralConfig, epochs: int, seed: int
) -> np.ndarray:
    """One shadow: the centralized recipe for a fixed number of epochs; returns its candidate logits."""
    cand_keys = cands.users * split.n_items + cands.items
    train_keys = split.train_users.astype(np.int64) * split.n_items + split.train_items
    rest = ~np.isin(train_keys, cand_keys)
    users = np.concatenate([split.train_users[rest], cands.users[keep]])
    items = np.concatenate([split.train_items[rest], cands.items[keep]])
    cfg: TrainConfig = config.train
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(split.n_users, split.n_items, config.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_decay)
    keys = positive_keys(users, items, split.n_items)
    with torch_threads(cfg.threads):
        for _ in range(epochs):
            train_epoch(model, optimizer, users, items, keys, cfg, rng)
            scheduler.step()
        model.eval()
        with torch.no_grad():
            return model(torch.from_numpy(cands.users), torch.from_numpy(cands.items)).double().numpy()


def standardise(logits: np.ndarray) -> np.ndarray:
    """Per model (last axis = candidates): zero mean, unit variance, so shadows transfer across scales."""
    mean = logits.mean(axis=-1, keepdims=True)
    std = logits.std(axis=-1, keepdims=True)
    return (logits - mean) / np.where(std > 0, std, 1.0)


def lira_scores(target: np.ndarray, shadows: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Log likelihood ratio in/out of each candidate's standardised target score (fixed variance)."""
    z, zs = standardise(target), standardise(shadows)
    n_in = keep.sum(axis=0)
    mu_in = np.where(keep, zs, 0.0).sum(axis=0) / n_in
    mu_out = np.where(~keep, zs, 0.0).sum(axis=0) / (len(keep) - n_in)
    var_in = np.mean(np.where(keep, (zs - mu_in) ** 2, 0.0).sum(axis=0) / n_in) + 1e-12
    var_out = np.mean(np.where(~keep, (zs - mu_out) ** 2, 0.0).sum(axis=0) / (len(keep) - n_in)) + 1e-12
    return 0.5 * ((z - mu_out) ** 2 / var_out - (z - mu_in) ** 2 / var_in) + 0.5 * np.log(var_out / var_in)


@dataclass(frozen=True)
class ShadowSet:
    logits: np.ndarray  # [n_shadows, n_candidates]
    keep: np.ndarray  # [n_shadows, n_candidates]
    epochs: int


def train_shadows(
    split: Split,
    cands: Candidates,
    config: CentralConfig,
    n_shadows: int,
    epochs: int,
    seed: int,
    on_done: Callable[[], object] | None = None,
) -> ShadowSet:
    keep = keep_matrix(n_shadows, len(cands), seed)
    logits = []
    for s in range(n_shadows):
        logits.append(train_shadow(split, cands, keep[s], config, epochs, seed + 1000 + s))
        if on_done is not None:
            on_done()
    return ShadowSet(np.stack(logits), keep, epochs)


def attack_arm(scores: np.ndarray, cands: Candidates, shadows: ShadowSet | None) -> tuple[dict, dict]:
    """Both attacks on one arm; each headline number is the stronger attack's (per-attack numbers kept).

    Also returns attack -> (member scores, non-member scores) for the ROC plot."""
    logits = pair_logits(scores, cands)
    raw = {"loss": -np.logaddexp(0.0, -logits)}  # log sigmoid: minus the loss of the pair as a positive
    if shadows is not None:
        raw["lira"] = lira_scores(logits, shadows.logits, shadows.keep)
    out = {name: attack_summary(s[cands.member], s[~cands.member]) for name, s in raw.items()}
    summary = {key: max(v[key] for v in out.values()) for key in ("auc", "tpr@1%fpr", "tpr@0.1%fpr")}
    summary["attacks"] = out
    return summary, {name: (s[cands.member], s[~cands.member]) for name, s in raw.items()}
