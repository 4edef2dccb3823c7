"""Two-part user models (oracles) that judge a served slate: would the user pick an item, and like it?

P(pick | shown) comes from an implicit-feedback model fitted on ALL interactions; P(like | picked) from
a rating model fitted on ALL ratings; each is calibrated on held-out data (``calibration.py``). Two
families for each part: EASE (item-item regression) and WRMF (latent factors) for picks, biased MF
(latent factors) and item-kNN with baselines (neighbourhood) for likes. Every pick model is crossed
with every like model, so no arm is judged only by an oracle of its own family.
A slate's satisfaction is its expected number of liked picks: sum over its items of P(pick) P(like).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedrec.common.datasets import Interactions
from fedrec.common.metrics import LIKED_RATING
from fedrec.simulations.arms.simple import ease_weights
from fedrec.simulations.retention.calibration import calibrate_likes, calibrate_picks
from fedrec.simulations.retention.implicit_mf import WRMFConfig, fit_wrmf
from fedrec.simulations.retention.knn import KNNConfig, fit_item_knn
from fedrec.simulations.retention.mf import MFConfig, fit_biased_mf

EASE_ORACLE_LAMBDA = 300.0  # middle of the 100-500 range docs/protocol.md reports as best on ML-100K
NO_LIKE_MODEL = "all"  # a dataset without ratings: every pick counts as liked


@dataclass(frozen=True)
class Part:
    """One calibrated half of a user model: P(pick | shown) or P(like | picked) for every (user, item)."""

    name: str
    family: str
    probability: np.ndarray  # [n_users, n_items] float32
    check: dict


@dataclass(frozen=True)
class Oracle:
    name: str  # "<pick>+<like>"
    pick: Part
    like: Part
    value: np.ndarray  # [n_users, n_items]: P(pick) P(like), 0 on items the user interacted with

    @property
    def scores(self) -> np.ndarray:
        """The oracle-greedy policy serves by expected liked picks, the best any policy can do per slate."""
        return self.value

    def describe(self, seen: np.ndarray) -> dict:
        greedy_first = -np.sort(-np.where(seen, 0.0, self.value), axis=1)[:, :10].sum(axis=1)
        return {
            "pick_model": self.pick.name,
            "pick_family": self.pick.family,
            "like_model": self.like.name,
            "like_family": self.like.family,
            "greedy_first_slate_liked_picks": float(greedy_first.mean()),
        }


def interacted(data: Interactions) -> np.ndarray:
    """[n_users, n_items] bool: every item the user touched anywhere in the data."""
    out = np.zeros((data.n_users, data.n_items), dtype=bool)
    out[data.users, data.items] = True
    return out


def has_ratings(data: Interactions) -> bool:
    return bool(len(data)) and bool(np.isfinite(data.ratings).all())


def ease_scores(
    users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, lam: float = EASE_ORACLE_LAMBDA
) -> np.ndarray:
    x = np.zeros(
        (n_users, n_items), dtype=np.float32
    )  # float32 halves the cost; lambda keeps the gram well conditioned
    x[users, items] = 1.0
    return x @ ease_weights(x, lam)


def _mf_ratings(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, n_users: int, n_items: int) -> np.ndarray:
    return fit_biased_mf(users, items, ratings, n_users, n_items, MFConfig()).dense()


def _knn_ratings(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, n_users: int, n_items: int) -> np.ndarray:
    return fit_item_knn(users, items, ratings, n_users, n_items, KNNConfig())


def _wrmf_scores(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> np.ndarray:
    return fit_wrmf(users, items, n_users, n_items, WRMFConfig())


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    fit: Callable[..., np.ndarray]


PICK_FAMILIES = (
    Family("ease", f"EASE (lambda {EASE_ORACLE_LAMBDA:g}), item-item regression", ease_scores),
    Family("wrmf", f"WRMF (implicit ALS, {WRMFConfig().dim} factors, alpha {WRMFConfig().alpha:g})", _wrmf_scores),
)
LIKE_FAMILIES = (
    Family("mf", f"biased MF (ALS, {MFConfig().dim} factors)", _mf_ratings),
    Family("knn", f"item-kNN with baselines ({KNNConfig().neighbours} neighbours)", _knn_ratings),
)


def pick_part(family: Family, data: Interactions, seen: np.ndarray, seed: int) -> Part:
    cal = calibrate_picks(family.fit, data, seed)
    scores = family.fit(data.users, data.items, data.n_users, data.n_items)
    return Part(family.name, family.description, cal.probabilities(scores, seen), cal.check)


def like_part(family: Family, data: Interactions, seen: np.ndarray, seed: int) -> Part:
    cal = calibrate_likes(family.fit, data, seed)
    predicted = np.clip(family.fit(data.users, data.items, data.ratings, data.n_users, data.n_items), 1.0, 5.0)
    return Part(
        family.name,
        f"{family.description}, liked = rating >= {LIKED_RATING:g}",
        np.where(seen, 0.0, cal.probabilities(predicted)).astype(np.float32),
        cal.check,
    )


def no_like_part(data: Interactions, seen: np.ndarray) -> Part:
    return Part(
        NO_LIKE_MODEL,
        "none: the dataset has no ratings, so every pick counts as liked",
        (~seen).astype(np.float32),
        {"skipped": f"{data.name} has no ratings"},
    )


def fit_parts(data: Interactions, seen: np.ndarray, seed: int = 0) -> tuple[list[Part], list[Part]]:
    picks = [pick_part(f, data, seen, seed) for f in PICK_FAMILIES]
    likes = [like_part(f, data, seen, seed) for f in LIKE_FAMILIES] if has_ratings(data) else [no_like_part(data, seen)]
    return picks, likes


def combine(picks: list[Part], likes: list[Part]) -> list[Oracle]:
    """Every pick model with every like model."""
    return [Oracle(f"{p.name}+{q.name}", p, q, p.probability * q.probability) for p in picks for q in likes]
