"""The tiny synthetic interaction log the tests share (a module, not conftest: tests/faults has its own
conftest, and ``from conftest import`` would find whichever was imported first)."""

from __future__ import annotations

import numpy as np

from fedrec.common.datasets import Interactions, from_raw
from fedrec.common.split import Split, temporal_split


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


GROUPS, USERS_PER_GROUP, ITEMS_PER_GROUP, PER_USER = 4, 20, 12, 8


def clustered_split(seed: int = 0) -> Split:
    """Users only touch items of their own group, so group-blind popularity is near chance."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(GROUPS * USERS_PER_GROUP):
        group = u % GROUPS
        chosen = rng.choice(ITEMS_PER_GROUP, size=PER_USER, replace=False) + group * ITEMS_PER_GROUP
        users += [u] * PER_USER
        items += chosen.tolist()
    stamps = rng.permutation(len(users))
    return temporal_split(from_raw("synthetic", np.array(users), np.array(items), stamps), seed)
