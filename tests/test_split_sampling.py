"""Split (docs/protocol.md) and negative sampling."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.common.datasets import from_raw
from fedrec.common.sampling import is_positive, positive_keys, sample_negatives
from fedrec.common.split import temporal_split


def test_last_is_test_second_last_is_validation(tiny):
    split = temporal_split(tiny, seed=0)
    for u in range(tiny.n_users):
        mine = tiny.users == u
        order = np.argsort(tiny.timestamps[mine], kind="stable")
        items = tiny.items[mine][order]
        assert split.test_items[u] == items[-1]
        assert split.val_items[u] == items[-2]
        assert sorted(split.train_items[split.train_users == u]) == sorted(items[:-2])
    assert len(split.train_users) + 2 * tiny.n_users == len(tiny)


def test_ties_broken_by_seed_and_reproducible():
    # one user, four items all at the same time: the held-out pair depends only on the seed
    data = from_raw("ties", np.zeros(4, int), np.arange(4), np.zeros(4, int))
    picks = {
        seed: (temporal_split(data, seed).test_items[0], temporal_split(data, seed).val_items[0]) for seed in range(12)
    }
    assert picks[3] == (temporal_split(data, 3).test_items[0], temporal_split(data, 3).val_items[0])
    assert len(set(picks.values())) > 1


def test_short_histories_are_train_only():
    data = from_raw("short", np.array([0, 0, 1, 1, 1]), np.array([0, 1, 0, 1, 2]), np.array([1, 2, 1, 2, 3]))
    split = temporal_split(data, 0)
    assert split.test_items[0] == -1 and split.val_items[0] == -1
    assert (split.train_users == 0).sum() == 2
    assert split.test_items[1] == 2 and split.val_items[1] == 1


def test_seen_matrix_excludes_validation_only_at_test(tiny):
    split = temporal_split(tiny, 0)
    val_seen = split.seen_matrix("validation")
    test_seen = split.seen_matrix("test")
    u = 0
    assert test_seen[u, split.val_items[u]] == 1
    assert val_seen[u, split.val_items[u]] == 0


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 40), st.integers(1, 30), st.integers(0, 2**31 - 1))
def test_negatives_never_positive(n_items, n_users, seed):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, size=200)
    items = rng.integers(0, n_items, size=200)
    keys = positive_keys(users, items, n_items)
    # every user keeps at least one free item, else no negative exists
    full = [u for u in range(n_users) if len(np.unique(items[users == u])) == n_items]
    query = np.array([u for u in np.repeat(np.arange(n_users), 5) if u not in full])
    negatives = sample_negatives(query, keys, n_items, rng)
    assert not is_positive(keys, query, negatives, n_items).any()
    assert ((negatives >= 0) & (negatives < n_items)).all()
