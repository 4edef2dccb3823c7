"""Negative sampling that never returns a positive, vectorized by rejection on a sorted key."""

from __future__ import annotations

import numpy as np


def positive_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Sorted unique user*n_items+item keys: membership tests become one searchsorted."""
    return np.unique(users.astype(np.int64) * n_items + items.astype(np.int64))


def is_positive(keys: np.ndarray, users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    query = users.astype(np.int64) * n_items + items.astype(np.int64)
    pos = np.searchsorted(keys, query)
    pos = np.minimum(pos, len(keys) - 1)
    return keys[pos] == query if len(keys) else np.zeros(len(query), dtype=bool)


def sample_negatives(
    users: np.ndarray,
    keys: np.ndarray,
    n_items: int,
    rng: np.random.Generator,
    max_rounds: int = 100,
) -> np.ndarray:
    """One uniformly drawn non-positive item per entry of ``users``.

    Raises if a user has interacted with every item (no negative exists).
    """
    users = np.asarray(users, dtype=np.int64)
    out = rng.integers(0, n_items, size=len(users))
    bad = is_positive(keys, users, out, n_items)
    for _ in range(max_rounds):
        if not bad.any():
            return out
        idx = np.flatnonzero(bad)
        out[idx] = rng.integers(0, n_items, size=len(idx))
        bad[idx] = is_positive(keys, users[idx], out[idx], n_items)
    # Fall back to an exact draw for the few users with almost every item positive.
    for i in np.flatnonzero(bad):
        taken = keys[(keys >= users[i] * n_items) & (keys < (users[i] + 1) * n_items)] - users[i] * n_items
        free = np.setdiff1d(np.arange(n_items), taken)
        if len(free) == 0:
            raise ValueError(f"user {users[i]} has interacted with every item: no negative exists")
        out[i] = rng.choice(free)
    return out
