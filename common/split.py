"""Per-user temporal leave-last-one-out split (docs/protocol.md), vectorized."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from fedrec.common.datasets import Interactions
from fedrec.common.errors import DataError


@dataclass(frozen=True)
class Split:
    """Train interactions plus one validation and one test item per user (-1 where the user has none)."""

    n_users: int
    n_items: int
    seed: int
    train_users: np.ndarray
    train_items: np.ndarray
    train_timestamps: np.ndarray
    val_items: np.ndarray  # [n_users]
    test_items: np.ndarray  # [n_users]
    val_timestamps: np.ndarray  # [n_users], 0 where none
    test_timestamps: np.ndarray  # [n_users], 0 where none
    # [n_users] the user's rating of the held-out item: NaN where none or the dataset has no ratings. Only the
    # liked-item metrics read it (fedrec.common.metrics); no arm trains on a held-out rating.
    val_ratings: np.ndarray
    test_ratings: np.ndarray

    def train_matrix(self) -> sp.csr_matrix:
        """Binary user x item matrix of train interactions (duplicates collapse to 1)."""
        data = np.ones(len(self.train_users), dtype=np.float32)
        m = sp.csr_matrix((data, (self.train_users, self.train_items)), shape=(self.n_users, self.n_items))
        m.data[:] = 1.0
        return m

    def seen_matrix(self, stage: str) -> sp.csr_matrix:
        """Items excluded when ranking at ``stage``: train, plus validation at test time."""
        seen = self.train_matrix()
        if stage == "test":
            has = self.val_items >= 0
            val = sp.csr_matrix(
                (np.ones(has.sum(), dtype=np.float32), (np.flatnonzero(has), self.val_items[has])),
                shape=seen.shape,
            )
            seen = seen + val
            seen.data[:] = 1.0
        elif stage != "validation":
            raise ValueError(f"stage must be 'validation' or 'test', not {stage!r}")
        return seen.tocsr()

    def targets(self, stage: str) -> np.ndarray:
        return self.test_items if stage == "test" else self.val_items

    def target_ratings(self, stage: str) -> np.ndarray:
        return self.test_ratings if stage == "test" else self.val_ratings


def temporal_split(data: Interactions, seed: int) -> Split:
    """Sort each user's interactions by time (seeded random tie-break); last = test, second-last = validation."""
    pairs = data.users * data.n_items + data.items
    if len(np.unique(pairs)) != len(pairs):  # a repeated pair could put the test item in train as well
        raise DataError(
            f"{data.name}: repeated (user, item) pairs; build the log with datasets.from_raw, "
            "which merges them (docs/protocol.md)"
        )
    rng = np.random.default_rng(seed)
    tiebreak = rng.permutation(len(data))
    order = np.lexsort((tiebreak, data.timestamps, data.users))
    users, items, stamps, ratings = data.users[order], data.items[order], data.timestamps[order], data.ratings[order]
    counts = np.bincount(users, minlength=data.n_users)
    ends = np.cumsum(counts)  # index one past each user's last interaction
    eligible = counts >= 3
    test_idx = ends[eligible] - 1
    val_idx = ends[eligible] - 2
    held = np.zeros(len(users), dtype=bool)
    held[test_idx] = True
    held[val_idx] = True

    val_items = np.full(data.n_users, -1, dtype=np.int64)
    test_items = np.full(data.n_users, -1, dtype=np.int64)
    val_ts = np.zeros(data.n_users, dtype=np.int64)
    test_ts = np.zeros(data.n_users, dtype=np.int64)
    eligible_users = np.flatnonzero(eligible)
    val_items[eligible_users] = items[val_idx]
    test_items[eligible_users] = items[test_idx]
    val_ts[eligible_users] = stamps[val_idx]
    test_ts[eligible_users] = stamps[test_idx]
    val_ratings = np.full(data.n_users, np.nan, dtype=np.float32)
    test_ratings = np.full(data.n_users, np.nan, dtype=np.float32)
    val_ratings[eligible_users] = ratings[val_idx]
    test_ratings[eligible_users] = ratings[test_idx]
    return Split(
        n_users=data.n_users,
        n_items=data.n_items,
        seed=seed,
        train_users=users[~held],
        train_items=items[~held],
        train_timestamps=stamps[~held],
        val_items=val_items,
        test_items=test_items,
        val_timestamps=val_ts,
        test_timestamps=test_ts,
        val_ratings=val_ratings,
        test_ratings=test_ratings,
    )
