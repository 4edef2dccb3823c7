"""The tiny synthetic interaction log the tests share (a module, not conftest: tests/faults has its own
conftest, and ``from conftest import`` would find whichever was imported first)."""

from __future__ import annotations

import numpy as np

from fedrec.common.datasets import Interactions, from_raw


def synthetic_log(n_users: int = 30, n_items: int = 40, per_user: int = 12, seed: int = 0) -> Interactions:
    """Users who prefer low item ids (a learnable popularity + taste signal), timestamps per user increasing."""
    rng = np.random.default_rng(seed)
    users, items, stamps, ratings = [], [], [], []
    weights = 1.0 / (np.arange(n_items) + 3.0)
    for u in range(n_users):
        chosen = rng.choice(n_items, size=per_user, replace=False, p=weights / weights.sum())
        users += [100 + u] * per_user
        items += (1000 + chosen).tolist()
        stamps += (1_000_000 + u * 10 + np.arange(per_user) * 86_400).tolist()
        ratings += rng.integers(1, 6, size=per_user).tolist()
    return from_raw(
        "synthetic", np.array(users), np.array(items), np.array(stamps), np.array(ratings, dtype=np.float32)
    )
