"""The two-part user model (P(pick | shown) x P(like | picked)) on a synthetic log with known tastes:
calibration against held-out behaviour, the satisfaction ordering of arms, and common random numbers."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.common.datasets import from_raw
from fedrec.simulations.retention.calibration import calibrate_likes, calibrate_picks, next_items_mask, unseen_ranks
from fedrec.simulations.retention.engine import GREEDY, popularity_scores, prepare, run_seeds
from fedrec.simulations.retention.implicit_mf import WRMFConfig, fit_wrmf
from fedrec.simulations.retention.knn import KNNConfig, fit_item_knn
from fedrec.simulations.retention.mf import MFConfig, fit_biased_mf
from fedrec.simulations.retention.summary import check_identical_at_zero, check_ordering, intervals, means
from fedrec.simulations.stats import ratio_ci

DAY = 86_400
N_USERS, N_ITEMS, DIM = 400, 120, 3


class World:
    """Each user's items are drawn by taste . features + popularity (Gumbel top-k) and consumed in a random
    order over sessions a few days apart; ratings follow taste match plus item quality. Both truths are
    kept for the tests."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.taste = rng.normal(0, 1, (N_USERS, DIM))
        self.features = rng.normal(0, 1, (N_ITEMS, DIM))
        self.pick_utility = self.taste @ self.features.T + np.linspace(1.0, 0, N_ITEMS)[None, :]
        self.quality = rng.normal(0, 0.6, N_ITEMS)
        self.mean_rating = 3.4 + 0.9 * self.taste @ self.features.T / np.sqrt(DIM) + self.quality[None, :]
        users, items, stamps, ratings = [], [], [], []
        for u in range(N_USERS):
            n = int(rng.integers(20, 36))
            order = rng.permutation(np.argsort(-(self.pick_utility[u] + rng.gumbel(size=N_ITEMS)))[:n])
            day = int(rng.integers(0, 120))
            for j, item in enumerate(order):
                if j % 5 == 0 and j:
                    day += int(rng.integers(1, 12))
                users.append(u)
                items.append(int(item))
                stamps.append(day * DAY + j)
                ratings.append(float(np.clip(np.rint(self.mean_rating[u, item] + rng.normal(0, 0.7)), 1, 5)))
        self.data = from_raw(
            "world", np.array(users), np.array(items), np.array(stamps), np.array(ratings, dtype=np.float32)
        )


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def test_next_items_are_each_users_latest_and_at_most_half(world):
    data = world.data
    mask = next_items_mask(data, 10, seed=0)
    for u in (0, 7, 123):
        mine = data.users == u
        held, kept = data.timestamps[mine & mask], data.timestamps[mine & ~mask]
        assert len(held) == min(10, mine.sum() // 2)
        assert held.min() >= kept.max()


def test_unseen_ranks_count_only_unseen_items():
    scores = np.array([[0.9, 0.1, 0.5, 0.7]])
    seen = np.array([[True, False, False, False]])
    assert unseen_ranks(scores, seen).tolist() == [[4, 2, 1, 0]]


def test_pick_calibration_matches_held_out_picks_on_the_other_users(world):
    def truth(users, items, n_users, n_items):
        return world.pick_utility

    cal = calibrate_picks(truth, world.data, seed=0)
    assert np.all(np.diff(cal.curve[:-1]) <= 1e-12) and cal.curve[-1] == 0.0
    for band in cal.check["by_rank_band"]:
        p = band["predicted"]
        sigma = np.sqrt(max(p * (1 - p), 1e-4) / band["cells"])
        assert abs(band["observed"] - p) < 4 * sigma + 0.01, band
    assert cal.check["top10_observed_picks"] > 3 * cal.check["top10_picks_if_random"]

    def useless(users, items, n_users, n_items):
        return np.random.default_rng(1).random((n_users, n_items))

    flat = calibrate_picks(useless, world.data, seed=0)
    assert flat.check["top10_predicted_picks"] == pytest.approx(flat.check["top10_picks_if_random"], rel=0.5)
    assert flat.check["top10_predicted_picks"] < cal.check["top10_predicted_picks"] / 2


def test_like_calibration_matches_held_out_ratings(world):
    def truth(users, items, ratings, n_users, n_items):
        return world.mean_rating

    cal = calibrate_likes(truth, world.data, seed=0)
    assert cal.check["brier"] < 0.85 * cal.check["brier_base_rate"]
    for d in cal.check["by_decile"]:
        assert abs(d["predicted"] - d["observed"]) < 4 * np.sqrt(0.25 / d["n"]) + 0.02, d
    assert np.all(np.diff(cal.values) >= 0)


def test_wrmf_and_knn_learn_the_world(world):
    data = world.data
    hold = next_items_mask(data, 5, seed=0)
    scores = fit_wrmf(data.users[~hold], data.items[~hold], N_USERS, N_ITEMS, WRMFConfig(dim=8, iters=6))
    seen = np.zeros((N_USERS, N_ITEMS), dtype=bool)
    seen[data.users[~hold], data.items[~hold]] = True
    ranks = unseen_ranks(scores, seen)[data.users[hold], data.items[hold]]
    open_items = (~seen).sum(axis=1)[data.users[hold]]
    assert np.mean(ranks < 10) > 3 * np.mean(10 / open_items)
    test = np.random.default_rng(0).random(len(data)) < 0.15
    args = (data.users[~test], data.items[~test], data.ratings[~test], N_USERS, N_ITEMS)
    knn = fit_item_knn(*args, KNNConfig(shrink=10.0))[data.users[test], data.items[test]]
    bias = fit_biased_mf(*args, MFConfig(dim=0, iters=3)).predict(data.users[test], data.items[test])
    truth = data.ratings[test]
    assert np.sqrt(np.mean((knn - truth) ** 2)) < np.sqrt(np.mean((bias - truth) ** 2))


@pytest.fixture(scope="module")
def study(world):
    setup = prepare(world.data)
    rng = np.random.default_rng(3)
    arms = {
        "random": rng.random((N_USERS, N_ITEMS)).astype(np.float32),
        "popularity": np.asarray(popularity_scores(world.data)),
        "centralized": world.pick_utility.astype(np.float32),
    }
    per_cell, _, _, first = run_seeds(setup, [arms], popularity_scores(world.data), (0, 1, 2))
    return setup, per_cell, means(intervals(per_cell)), first


def test_four_user_models_cross_the_families(study):
    setup = study[0]
    assert [o.name for o in setup.oracles] == ["ease+mf", "ease+knn", "wrmf+mf", "wrmf+knn"]
    for o in setup.oracles:
        assert np.all((o.value >= 0) & (o.value <= 1)) and not o.value[setup.seen].any()


def test_satisfaction_ordering_holds_under_every_user_model(study):
    _, _, mean, first = study
    ordering = check_ordering(mean, "centralized", first[0])
    assert set(ordering) == {"ease+mf", "ease+knn", "wrmf+mf", "wrmf+knn"}
    for oracle, c in ordering.items():
        assert c["order"] == [GREEDY, "centralized", "popularity", "random"]
        assert c["holds"], (oracle, c)


def test_common_random_numbers_give_identical_retention_at_beta_zero(study):
    _, per_cell, mean, _ = study
    check = check_identical_at_zero(per_cell)
    assert check["holds"] and check["max_abs_diff"] == 0.0
    for oracle in mean["centralized"]:
        assert mean["centralized"][oracle]["5"]["d30"] > mean["random"][oracle]["5"]["d30"]


def test_fieller_interval_covers_the_ratio_and_refuses_a_null_denominator():
    rng = np.random.default_rng(0)
    d = 1.0 + 0.1 * rng.normal(size=15)
    r = ratio_ci(0.5 * d + 0.02 * rng.normal(size=15), d)
    assert r["ci95"][0] < 0.5 < r["ci95"][1] and r["ci95"][1] - r["ci95"][0] < 0.1
    assert ratio_ci(rng.normal(size=15), 0.01 + rng.normal(size=15)) is None
