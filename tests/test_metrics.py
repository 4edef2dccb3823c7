"""Metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.common.datasets import from_raw
from fedrec.common.metrics import evaluate_scores, full_ranks, hit_ndcg, liked_hit_ndcg, sampled_ranks, top_k
from fedrec.common.split import temporal_split


def two_users():
    # user 0: items 0,1,2,3 in time order -> train {0,1}, val 2, test 3; user 1: 4,5,6 -> train {4}, val 5, test 6
    users = np.array([0, 0, 0, 0, 1, 1, 1])
    items = np.array([0, 1, 2, 3, 4, 5, 6])
    stamps = np.array([1, 2, 3, 4, 1, 2, 3])
    extra = from_raw("hand", np.r_[users, 1], np.r_[items, 9], np.r_[stamps, 0])  # 10 items in the catalogue
    return temporal_split(extra, 0)


def test_full_rank_by_hand():
    split = two_users()
    n = split.n_items  # 8 distinct items: 0..6 and 9 -> dense 0..7
    scores = np.zeros((2, n))
    scores[0] = np.arange(n)[::-1]  # item 0 best ... item 7 worst
    scores[1] = np.arange(n)  # item 7 best
    ranks = full_ranks(scores, split, "test")
    # user 0: train {0,1} and val 2 removed; candidates 3..7 by score 4,3,2,1,0 -> test item 3 ranks 0
    assert ranks[0] == 0
    # user 1: train {4, 7(=item 9)} and val 5 removed; candidates 0,1,2,3,6 -> item 6 scores 6, best -> 0
    assert ranks[1] == 0
    scores[1] = -np.arange(n)
    # now item 6 scores -6: candidates scores 0,-1,-2,-3,-6 -> rank 4
    assert full_ranks(scores, split, "test")[1] == 4


def test_hr_ndcg_by_hand():
    ranks = np.array([0, 1, 9, 10, -1])
    hr, ndcg = hit_ndcg(ranks, 10)
    assert hr == pytest.approx(3 / 4)
    assert ndcg == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(11) + 0) / 4)


def test_ties_are_split_at_random_not_in_favour():
    split = two_users()
    ranks = [full_ranks(np.zeros((2, split.n_items)), split, "test", seed=s)[0] for s in range(200)]
    # user 0 has 5 candidates all tied: uniform over 0..4
    assert set(ranks) == {0, 1, 2, 3, 4}
    assert np.mean(ranks) == pytest.approx(2, abs=0.35)


def test_sampled_ranks_only_use_never_seen_items(tiny):
    split = temporal_split(tiny, 0)
    scores = np.zeros((split.n_users, split.n_items))
    for u in range(split.n_users):
        scores[u, split.test_items[u]] = 1.0
    assert (sampled_ranks(scores, split, "test", n_negatives=5) == 0).all()
    assert evaluate_scores(scores, split)["hr@10_sampled"] == 1.0


def test_oracle_scores_are_perfect(tiny):
    split = temporal_split(tiny, 0)
    scores = np.random.default_rng(0).random((split.n_users, split.n_items))
    scores[np.arange(split.n_users), split.test_items] = 10
    metrics = evaluate_scores(scores, split)
    assert metrics["hr@10"] == 1.0 and metrics["ndcg@10"] == 1.0


def test_top_k_excludes_seen_and_orders(tiny):
    split = temporal_split(tiny, 0)
    scores = np.tile(np.arange(split.n_items, dtype=float), (split.n_users, 1))
    seen = split.seen_matrix("test")
    best = top_k(scores, seen, 5)
    for u in range(split.n_users):
        assert not seen[u, best[u]].toarray().any()
        assert list(best[u]) == sorted(best[u], reverse=True)


def test_a_held_out_item_counts_as_liked_only_when_rated_four_or_more():
    ranks = np.array([0, 0, 3, 12, -1, 1])
    ratings = np.array([5.0, 3.0, 4.0, 5.0, 5.0, np.nan])  # user 1's top hit is disliked, user 5's unrated
    hr, ndcg, share = liked_hit_ndcg(ranks, ratings, 10)
    assert share == pytest.approx(3 / 5)  # users 0, 2 and 3 of the five with a held-out item
    assert hr == pytest.approx(2 / 5)  # users 0 and 2: user 3 liked its item but ranked it 13th
    assert ndcg == pytest.approx((1.0 + 1.0 / np.log2(5.0)) / 5)
    full_hr, full_ndcg = hit_ndcg(ranks, 10)
    assert hr < full_hr and ndcg < full_ndcg


def test_liked_metrics_appear_only_for_rated_data():
    users = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    items = np.array([0, 1, 2, 3, 4, 5, 6, 3])
    stamps = np.array([1, 2, 3, 4, 1, 2, 3, 4])
    ratings = np.array([5, 5, 5, 2, 5, 5, 5, 4], dtype=np.float32)  # the test items: 3 rated 2 and 4, and 3 rated 4
    rated = temporal_split(from_raw("rated", users, items, stamps, ratings), 0)
    assert rated.test_ratings.tolist() == [2.0, 4.0] and rated.val_ratings.tolist() == [5.0, 5.0]
    scores = np.zeros((2, rated.n_items))
    scores[:, 3] = 1.0  # both users' test item ranked first
    found = evaluate_scores(scores, rated, "test")
    assert found["ndcg@10"] == 1.0 and found["liked_ndcg@10"] == 0.5 and found["liked_share"] == 0.5
    unrated = temporal_split(from_raw("unrated", users, items, stamps), 0)
    assert not any(k.startswith("liked") for k in evaluate_scores(scores, unrated, "test"))
