"""Turn a model's scores into probabilities that match held-out behaviour, and say how well they match.

Picks: hold out each user's next interactions (the last ``NEXT_ITEMS`` by time), refit the pick model
on the rest, and measure how often the item at each rank of the user's not-yet-seen items is among the
held-out ones. The calibrated P(pick | shown) of an item is that rate at the item's rank (isotonic, so
it never rises down the ranking). Rank, not the raw score, is the score level: a model refitted on all
interactions scores users with more history than the held-out fit saw, so raw scores drift between the
two fits while ranks do not.
Likes: hold out a random share of the ratings, refit the rating model, and map its predicted rating to
the share of held-out ratings >= 4 at that prediction (isotonic).
Each map is fitted on one half of the held-out users or ratings and checked on the other half.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import isotonic_regression

from fedrec.common.datasets import Interactions
from fedrec.common.metrics import LIKED_RATING

NEXT_ITEMS = 10  # held-out next interactions per user: one slate's worth
RATING_HOLDOUT = 0.1
RANK_BANDS = (0, 1, 3, 10, 30, 100, 300, 1000)

PickFit = Callable[[np.ndarray, np.ndarray, int, int], np.ndarray]  # (users, items, n_users, n_items) -> scores
RatingFit = Callable[[np.ndarray, np.ndarray, np.ndarray, int, int], np.ndarray]  # + ratings -> predictions


def next_items_mask(data: Interactions, n_next: int, seed: int) -> np.ndarray:
    """Each user's last min(n_next, n_u // 2) interactions by time; equal timestamps in a seeded random order."""
    tie = np.random.default_rng(seed).random(len(data))
    order = np.lexsort((tie, data.timestamps, data.users))
    by_user = data.users[order]
    position = np.arange(len(order)) - np.searchsorted(by_user, by_user)
    count = np.bincount(data.users, minlength=data.n_users)[by_user]
    mask = np.zeros(len(data), dtype=bool)
    mask[order] = position >= count - np.minimum(n_next, count // 2)
    return mask


def unseen_ranks(scores: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """[n_users, n_items] int32: rank of each item among the user's unseen items (0 = best); seen items get n_items."""
    n_users, n_items = scores.shape
    order = np.argsort(np.where(seen, np.inf, -np.asarray(scores, dtype=np.float64)), axis=1, kind="stable")
    ranks = np.empty((n_users, n_items), dtype=np.int32)
    np.put_along_axis(ranks, order, np.arange(n_items, dtype=np.int32)[None, :], axis=1)
    return np.where(seen, n_items, ranks)


def _halves(n: int, seed: int) -> np.ndarray:
    """True for the half that fits the map, False for the half that checks it."""
    return np.random.default_rng(seed + 1).permutation(n) < (n + 1) // 2


@dataclass(frozen=True)
class PickCalibration:
    curve: np.ndarray  # [n_items + 1]: P(pick | shown) of the item at each rank; the last entry (seen) is 0
    check: dict

    def probabilities(self, scores: np.ndarray, seen: np.ndarray) -> np.ndarray:
        return self.curve[unseen_ranks(scores, seen)].astype(np.float32)


def _rank_counts(
    ranks: np.ndarray, users: np.ndarray, n_open: np.ndarray, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out hits at each rank and how many users had an unseen item at that rank."""
    hits = np.bincount(ranks, minlength=n_items + 1)[:n_items].astype(np.float64)
    exposed = np.bincount(n_open[users], minlength=n_items + 1)[::-1].cumsum()[::-1][1:].astype(np.float64)
    return hits, exposed


def calibrate_picks(fit: PickFit, data: Interactions, seed: int, n_next: int = NEXT_ITEMS) -> PickCalibration:
    hold = next_items_mask(data, n_next, seed)
    n_users, n_items = data.n_users, data.n_items
    seen = np.zeros((n_users, n_items), dtype=bool)
    seen[data.users[~hold], data.items[~hold]] = True
    pairs = np.unique(np.stack([data.users[hold], data.items[hold]], axis=1), axis=0)
    pairs = pairs[~seen[pairs[:, 0], pairs[:, 1]]]  # a held-out repeat of a seen item is not a new pick
    ranks = unseen_ranks(fit(data.users[~hold], data.items[~hold], n_users, n_items), seen)
    held_rank = ranks[pairs[:, 0], pairs[:, 1]]
    n_open = (~seen).sum(axis=1)
    fits_map = _halves(n_users, seed)
    a_users, b_users = np.flatnonzero(fits_map), np.flatnonzero(~fits_map)
    in_a = fits_map[pairs[:, 0]]
    hits_a, exposed_a = _rank_counts(held_rank[in_a], a_users, n_open, n_items)
    rate = np.divide(hits_a, exposed_a, out=np.zeros(n_items), where=exposed_a > 0)
    curve = isotonic_regression(rate, weights=np.maximum(exposed_a, 1e-9), increasing=False).x
    curve = np.append(np.clip(curve, 0.0, 1.0), 0.0)
    hits_b, exposed_b = _rank_counts(held_rank[~in_a], b_users, n_open, n_items)
    bands = []
    for lo, hi in zip(RANK_BANDS, RANK_BANDS[1:] + (n_items,)):
        if lo >= n_items:
            break
        hi = min(hi, n_items)
        cells = exposed_b[lo:hi].sum()
        bands.append(
            {
                "ranks": [lo + 1, hi],
                "cells": int(cells),
                "predicted": float((curve[lo:hi] * exposed_b[lo:hi]).sum() / max(cells, 1)),
                "observed": float(hits_b[lo:hi].sum() / max(cells, 1)),
            }
        )
    top = min(10, n_items)
    return PickCalibration(
        curve,
        {
            "held_out": f"each user's last {n_next} interactions (at most half of them), {len(pairs)} pairs",
            "fit_users": len(a_users),
            "check_users": len(b_users),
            "top10_predicted_picks": float(curve[:top].sum()),
            "top10_observed_picks": float(hits_b[:top].sum() / max(len(b_users), 1)),
            "top10_picks_if_random": float(n_next * top / max(n_open.mean(), 1)),
            "by_rank_band": bands,
        },
    )


@dataclass(frozen=True)
class LikeCalibration:
    knots: np.ndarray  # predicted ratings, ascending
    values: np.ndarray  # P(rating >= 4) at each knot
    check: dict

    def probabilities(self, predicted: np.ndarray) -> np.ndarray:
        return np.interp(predicted, self.knots, self.values).astype(np.float32)


def calibrate_likes(fit: RatingFit, data: Interactions, seed: int) -> LikeCalibration:
    test = np.random.default_rng(seed).random(len(data)) < RATING_HOLDOUT
    tr = ~test
    dense = fit(data.users[tr], data.items[tr], data.ratings[tr], data.n_users, data.n_items)
    pred = np.clip(dense[data.users[test], data.items[test]].astype(np.float64), 1.0, 5.0)
    truth = data.ratings[test].astype(np.float64)
    liked = (truth >= LIKED_RATING).astype(np.float64)
    fits_map = _halves(len(pred), seed)
    order = np.argsort(pred[fits_map], kind="stable")
    knots = pred[fits_map][order]
    values = np.clip(isotonic_regression(liked[fits_map][order]).x, 0.0, 1.0)
    cal = LikeCalibration(knots, values, {})
    p_check, y_check = cal.probabilities(pred[~fits_map]), liked[~fits_map]
    edges = np.quantile(p_check, np.linspace(0, 1, 11)[1:-1])
    decile = np.searchsorted(edges, p_check, side="right")
    base = float(liked[fits_map].mean())
    return LikeCalibration(
        knots,
        values,
        {
            "held_out": f"random {RATING_HOLDOUT:.0%} of ratings, {int(test.sum())} ratings",
            "rmse": float(np.sqrt(np.mean((pred - truth) ** 2))),
            "liked_base_rate": float(y_check.mean()),
            "brier": float(np.mean((p_check - y_check) ** 2)),
            "brier_base_rate": float(np.mean((base - y_check) ** 2)),
            "by_decile": [
                {
                    "decile": d + 1,
                    "predicted": float(p_check[decile == d].mean()),
                    "observed": float(y_check[decile == d].mean()),
                    "n": int((decile == d).sum()),
                }
                for d in range(10)
                if (decile == d).any()
            ],
        },
    )
