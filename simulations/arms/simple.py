"""The reference arms: random, popularity and EASE (Steck 2019, closed form)."""

from __future__ import annotations

import numpy as np

from fedrec.common.errors import FedrecError
from fedrec.common.metrics import full_ranks, hit_ndcg
from fedrec.common.split import Split
from fedrec.simulations.arms.base import ArmBinding, ArmResult, Fitter

EASE_LAMBDAS = (100.0, 200.0, 300.0, 500.0, 800.0)


def fit_random(split: Split, seed: int) -> ArmResult:
    rng = np.random.default_rng(seed)
    return ArmResult("random", rng.random((split.n_users, split.n_items), dtype=np.float32))


def fit_popularity(split: Split, seed: int) -> ArmResult:
    counts = np.bincount(split.train_items, minlength=split.n_items).astype(np.float32)
    return ArmResult("popularity", np.broadcast_to(counts, (split.n_users, split.n_items)))


def ease_weights(x: np.ndarray, lam: float) -> np.ndarray:
    gram = x.T @ x
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)
    b[np.diag_indices_from(b)] = 0.0
    return b


def fit_ease(split: Split, seed: int, lambdas: tuple[float, ...] = EASE_LAMBDAS) -> ArmResult:
    """EASE on train; lambda chosen by validation NDCG@10 (the test item is never looked at)."""
    x = split.train_matrix().toarray().astype(np.float64)
    curve = {}
    best: tuple[float, float | None, np.ndarray | None] = (-1.0, None, None)
    for lam in lambdas:
        scores = (x @ ease_weights(x, lam)).astype(np.float32)
        _, ndcg = hit_ndcg(full_ranks(scores, split, "validation", seed))
        curve[str(lam)] = ndcg
        if ndcg > best[0]:
            best = (ndcg, lam, scores)
    if best[2] is None:
        raise FedrecError("ease: no lambda to choose from")
    return ArmResult("ease", best[2], {"lambda": best[1], "validation_ndcg@10_by_lambda": curve})


# The reference arms read no settings: each binder hands back its fit function as it is.
def bind_random(binding: ArmBinding) -> Fitter:
    return fit_random


def bind_popularity(binding: ArmBinding) -> Fitter:
    return fit_popularity


def bind_ease(binding: ArmBinding) -> Fitter:
    return fit_ease
