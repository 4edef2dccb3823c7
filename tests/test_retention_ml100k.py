"""The retention checks of protocol.md on the real ML-100K (fetched by the conftest fixture), under
each of the four two-part user models.

EASE fitted on the temporal split's train part stands in for `centralized` (a strong arm, seconds to fit).
"""

from __future__ import annotations

import pytest

from fedrec.common.datasets import load_dataset
from fedrec.common.split import temporal_split
from fedrec.simulations.arms.simple import fit_ease, fit_popularity, fit_random
from fedrec.simulations.retention.engine import GREEDY, popularity_scores, prepare, run_seeds
from fedrec.simulations.retention.observed import active_days, observed_retention
from fedrec.simulations.retention.summary import (
    CALIBRATION_TOLERANCE,
    check_calibration,
    check_identical_at_zero,
    check_monotone,
    check_ordering,
    intervals,
    means,
)

SEEDS = (0, 1, 2, 3, 4)
USER_MODELS = ("ease+mf", "ease+knn", "wrmf+mf", "wrmf+knn")


@pytest.fixture(scope="module")
def data(ml100k_dir):
    return load_dataset("ml-100k", ml100k_dir)


@pytest.fixture(scope="module")
def study(data):
    split = temporal_split(data, 0)
    arms = {
        "random": fit_random(split, 0).scores,
        "popularity": fit_popularity(split, 0).scores,
        "ease": fit_ease(split, 0, lambdas=(300.0,)).scores,
    }
    setup = prepare(data)
    per_seed, _, refs, first = run_seeds(setup, [arms], popularity_scores(data), SEEDS)
    s_ref = {o.name: float(refs[:, j].mean()) for j, o in enumerate(setup.oracles)}
    return setup, per_seed, means(intervals(per_seed)), s_ref, first[0]


def test_observed_retention_from_timestamps(data):
    obs = observed_retention(active_days(data))
    assert obs["n_users"] == 782
    assert (round(obs["d1"], 3), round(obs["d7"], 3), round(obs["d30"], 3)) == (0.137, 0.244, 0.335)


def test_calibrated_at_beta_zero(study):
    setup, _, mean, _, _ = study
    cal = check_calibration(mean, setup.observed)
    for key in ("d1", "d7", "d30"):
        assert abs(cal[key]["simulated"] - cal[key]["observed"]) <= CALIBRATION_TOLERANCE, cal
    assert cal["holds"]


def test_fitted_propensity_prior_is_in_the_protocols_range(study):
    prior = study[0].model.prior
    assert 0.2 < prior.a < 1.0 and 0.3 < prior.b < 1.5  # protocol.md: "about a = 0.53, b = 0.87"
    assert 0.3 < prior.mean < 0.45


def test_beta_zero_gives_identical_retention_for_every_arm(study):
    _, per_seed, _, _, _ = study
    check = check_identical_at_zero(per_seed)
    assert check["holds"] and check["max_abs_diff"] == 0.0


def test_retention_rises_with_beta_for_arms_better_than_popularity(study):
    _, _, mean, s_ref, _ = study
    check = check_monotone(mean, s_ref)
    better = [(arm, o) for arm, by_o in check["by_arm"].items() for o, c in by_o.items() if c["better_than_popularity"]]
    assert {(a, o) for a in ("ease", GREEDY) for o in USER_MODELS} <= set(better)
    assert check["holds"], check
    for arm, oracle in better:
        d30 = [mean[arm][oracle][b]["d30"] for b in ("0", "0.5", "2", "5")]
        assert d30[-1] > d30[0] + 0.02  # a clear rise, not only a tie
    assert all(check["by_arm"]["random"][o]["falls_with_beta"] for o in USER_MODELS)


def test_satisfaction_ordering_holds_under_every_user_model(study):
    _, _, mean, _, first = study
    ordering = check_ordering(mean, "ease", first)
    assert set(ordering) == set(USER_MODELS)
    for oracle, c in ordering.items():
        assert c["holds"], (oracle, c)


def test_user_model_parts_are_calibrated_on_held_out_data(study):
    setup = study[0]
    for part in setup.picks:
        c = part.check
        assert c["top10_observed_picks"] > 10 * c["top10_picks_if_random"]
        assert c["top10_predicted_picks"] == pytest.approx(c["top10_observed_picks"], rel=0.15)
    for part in setup.likes:
        c = part.check
        assert c["brier"] < 0.8 * c["brier_base_rate"] and c["rmse"] < 0.95
        for d in c["by_decile"]:
            assert abs(d["predicted"] - d["observed"]) < 0.06, (part.name, d)
