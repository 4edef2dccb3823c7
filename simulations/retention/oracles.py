"""Ground-truth preference models (oracles) that decide whether a served item satisfies a user.

Two families, fitted on ALL interactions (protocol.md): O1 = biased matrix factorisation on ratings
(relevant = predicted rating >= 4), O2 = EASE on the binary matrix (relevant = in the top decile of
the user's not-yet-interacted items). An arm is never judged only by an oracle of its own family.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.common.datasets import Interactions
from fedrec.simulations.arms.simple import ease_weights
from fedrec.simulations.retention.mf import MFConfig, fit_biased_mf

EASE_ORACLE_LAMBDA = 300.0  # middle of the 100-500 range protocol.md reports as best on ML-100K
RELEVANT_RATING = 4.0
TOP_SHARE = 0.1


@dataclass(frozen=True)
class Oracle:
    name: str
    family: str
    rule: str
    scores: np.ndarray  # [n_users, n_items]; the oracle-greedy policy serves by these
    relevant: np.ndarray  # [n_users, n_items] bool, False on items the user already interacted with

    def describe(self, seen: np.ndarray) -> dict:
        return {"family": self.family, "relevance_rule": self.rule,
                "relevant_share_of_unseen": float(self.relevant.sum() / max((~seen).sum(), 1))}


def interacted(data: Interactions) -> np.ndarray:
    """[n_users, n_items] bool: every item the user touched anywhere in the data."""
    out = np.zeros((data.n_users, data.n_items), dtype=bool)
    out[data.users, data.items] = True
    return out


def has_ratings(data: Interactions) -> bool:
    return bool(np.isfinite(data.ratings).all())


def top_share(scores: np.ndarray, seen: np.ndarray, share: float = TOP_SHARE) -> np.ndarray:
    """Each user's top ``share`` of not-seen items by score (at least one item where any is left)."""
    masked = np.where(seen, -np.inf, scores.astype(np.float64))
    n_open = (~seen).sum(axis=1)
    k = np.maximum(np.ceil(share * n_open).astype(np.int64), 1)
    ordered = -np.sort(-masked, axis=1)
    threshold = ordered[np.arange(len(scores)), np.minimum(k, scores.shape[1]) - 1]
    return (masked >= threshold[:, None]) & ~seen & (n_open[:, None] > 0)


def ease_scores(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int,
                lam: float = EASE_ORACLE_LAMBDA) -> np.ndarray:
    x = np.zeros((n_users, n_items), dtype=np.float64)
    x[users, items] = 1.0
    return (x @ ease_weights(x, lam)).astype(np.float32)


def mf_oracle(data: Interactions, seen: np.ndarray, config: MFConfig = MFConfig()) -> Oracle:
    model = fit_biased_mf(data.users, data.items, data.ratings, data.n_users, data.n_items, config)
    predicted = np.clip(model.dense(), 1.0, 5.0)
    return Oracle("mf", "biased matrix factorisation (ALS)", f"predicted rating >= {RELEVANT_RATING:g}",
                  predicted, (predicted >= RELEVANT_RATING) & ~seen)


def ease_oracle(data: Interactions, seen: np.ndarray, lam: float = EASE_ORACLE_LAMBDA) -> Oracle:
    scores = ease_scores(data.users, data.items, data.n_users, data.n_items, lam)
    return Oracle("ease", f"EASE (lambda {lam:g})", f"top {TOP_SHARE:.0%} of the user's unseen items by score",
                  scores, top_share(scores, seen))
