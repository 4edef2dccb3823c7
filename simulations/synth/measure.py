"""The statistics a synthetic population is judged by, computed the same way on any dataset."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from fedrec.common.datasets import Interactions
from fedrec.common.metrics import evaluate_scores
from fedrec.common.split import temporal_split
from fedrec.simulations.arms.simple import ease_weights
from fedrec.simulations.retention.observed import active_days, observed_retention

EASE_LAMBDA = 300.0
DENSE_CELLS = 20_000 * 3_000


@dataclass(frozen=True)
class PopulationStats:
    users: int
    items: int
    interactions: int
    per_user_mean: float
    per_user_median: float
    per_user_p90: float
    item_gini: float
    d1: float
    d7: float
    d30: float
    active_days_mean: float
    single_day_share: float  # users active on one day only
    order_spearman: float
    heldout_shift: float
    validation_lift: float
    rating_mean: float

    def as_dict(self) -> dict:
        return asdict(self)


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of item popularity (0: every item equally popular; near 1: one item has everything)."""
    ordered = np.sort(np.asarray(counts, dtype=np.float64))
    lorenz = np.cumsum(ordered) / ordered.sum()
    return float(1.0 - 2.0 * lorenz.mean() + 1.0 / len(ordered))


def _average_ranks(users: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Rank of each value among its user's values (0-based; ties share their mean rank)."""
    order = np.lexsort((values, users))
    u, v = users[order], values[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    first_of_user = np.repeat(starts, np.diff(np.r_[starts, len(u)]))
    ordinal = np.arange(len(u)) - first_of_user
    run = np.cumsum(np.r_[True, (u[1:] != u[:-1]) | (v[1:] != v[:-1])]) - 1
    mean_rank = np.bincount(run, weights=ordinal) / np.bincount(run)
    ranks = np.empty(len(u))
    ranks[order] = mean_rank[run]
    return ranks


def order_spearman(data: Interactions) -> float:
    """Mean over users of Spearman's correlation between an interaction's time and its item's log popularity.

    Negative in MovieLens: users rate the well-known films first, so a user's held-out (latest) items
    are less popular than the rest, which is what decides how well popularity does under the protocol.
    """
    popularity = np.bincount(data.items, minlength=data.n_items)[data.items].astype(np.float64)
    a = _average_ranks(data.users, data.timestamps.astype(np.float64))
    b = _average_ranks(data.users, popularity)
    n = np.bincount(data.users, minlength=data.n_users).astype(np.float64)
    sums = [np.bincount(data.users, weights=w, minlength=data.n_users) for w in (a, b, a * a, b * b, a * b)]
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sums[4] / n - sums[0] * sums[1] / n**2
        var_a = sums[2] / n - (sums[0] / n) ** 2
        var_b = sums[3] / n - (sums[1] / n) ** 2
        corr = cov / np.sqrt(var_a * var_b)
    keep = (var_a > 1e-12) & (var_b > 1e-12)
    return float(corr[keep].mean())


def heldout_shift(data: Interactions, seed: int = 0) -> float:
    """Mean log popularity of the protocol's validation items minus that of all interactions."""
    log_pop = np.log(np.bincount(data.items, minlength=data.n_items).astype(np.float64))
    held = temporal_split(data, seed).val_items
    return float(log_pop[held[held >= 0]].mean() - log_pop[data.items].mean())


def validation_lift(data: Interactions, seed: int = 0, k: int = 10) -> float:
    """HR@k of EASE over HR@k of popularity at the protocol's validation position (the test items unseen).

    How much a learner gains from who-picks-what beyond popularity where the protocol measures it.
    Dense users x items: source-sized data only."""
    split = temporal_split(data, seed)
    x = split.train_matrix().toarray().astype(np.float64)
    ease = x @ ease_weights(x, EASE_LAMBDA)
    popularity = np.tile(x.sum(axis=0), (len(x), 1))
    hits = [evaluate_scores(scores, split, "validation", seed, k)[f"hr@{k}"] for scores in (ease, popularity)]
    return hits[0] / max(hits[1], 1e-12)


def measure(data: Interactions, dense_ok: bool | None = None) -> PopulationStats:
    """``validation_lift`` needs a dense users x items matrix: by default only up to 20k users."""
    dense_ok = data.n_users * data.n_items <= DENSE_CELLS if dense_ok is None else dense_ok
    per_user = np.bincount(data.users, minlength=data.n_users)
    days = active_days(data)
    retention = observed_retention(days)
    ratings = data.ratings[np.isfinite(data.ratings)]
    return PopulationStats(
        users=data.n_users,
        items=data.n_items,
        interactions=len(data),
        per_user_mean=float(per_user.mean()),
        per_user_median=float(np.median(per_user)),
        per_user_p90=float(np.percentile(per_user, 90)),
        item_gini=gini(np.bincount(data.items, minlength=data.n_items)),
        d1=retention["d1"],
        d7=retention["d7"],
        d30=retention["d30"],
        active_days_mean=float(days.counts.mean()),
        single_day_share=float(np.mean(days.counts == 1)),
        order_spearman=order_spearman(data),
        heldout_shift=heldout_shift(data),
        validation_lift=validation_lift(data) if dense_ok else float("nan"),
        rating_mean=float(ratings.mean()) if len(ratings) else float("nan"),
    )
