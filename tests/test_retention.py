"""Retention simulator building blocks on small synthetic data: each piece against a hand count or a
plain per-user reference, so the vectorized code is checked, not trusted."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fedrec.common.datasets import from_raw
from fedrec.simulations.retention.gaps import GapHistogram, GapModel, fit_gaps
from fedrec.simulations.retention.mf import MFConfig, fit_biased_mf
from fedrec.simulations.retention.observed import active_days, observed_retention, observed_survival
from fedrec.simulations.retention.propensity import BetaPrior, fit_beta
from fedrec.simulations.retention.reference import simulate_loop
from fedrec.simulations.retention.simulator import NEVER, UserModel, draw, metrics, simulate
from fedrec.simulations.retention.slates import ranked_unseen, slate_satisfaction

DAY = 86_400


def days_data(per_user_days: list[list[int]]):
    """One interaction per listed day (two on the first day, to check days are de-duplicated)."""
    users, items, stamps = [], [], []
    for u, days in enumerate(per_user_days):
        for j, d in enumerate([days[0], *days]):
            users.append(u)
            items.append(j)
            stamps.append(d * DAY + 3600 * (j % 20))
    return from_raw("toy", np.array(users), np.array(items), np.array(stamps), np.full(len(users), 4.0))


def test_observed_retention_counts_by_hand():
    # last day of the data is 100; users starting after day 70 lack 30 days of follow-up
    data = days_data([[0, 1, 50], [10, 17], [20, 45], [30], [60, 100], [80, 81]])
    obs = observed_retention(active_days(data))
    assert obs["n_users"] == 5  # user 5 (first day 80) is outside the cohort
    assert obs["d1"] == pytest.approx(1 / 5)  # user 0
    assert obs["d7"] == pytest.approx(2 / 5)  # users 0, 1 (gap exactly 7)
    assert obs["d30"] == pytest.approx(3 / 5)  # + user 2 (gap 25); user 4's gap of 40 is too long


def test_observed_survival_and_gaps():
    data = days_data([[0, 1, 50], [10, 17], [20, 45], [30], [60, 100], [80, 81]])
    days = active_days(data)
    surv = observed_survival(days, horizon=40)  # cohort: first day <= 60
    assert surv["n_users"] == 5
    assert surv["survival"][0] == 1.0
    # users 1 (+7), 2 (+25) and 4 (+40, the horizon's last day) come back; user 0's day 50 is too late
    assert surv["survival"][2] == pytest.approx(3 / 5)
    assert surv["active_days"] == pytest.approx((2 + 2 + 2 + 1 + 2) / 5)
    gaps = fit_gaps(days, follow_up=30)
    assert gaps.first.n_gaps == 4 and gaps.later.n_gaps == 1  # user 4's gap starts too late, user 5 too
    assert gaps.first.probs[0] == pytest.approx(1 / 4)


def test_gap_histogram_sampling_matches_its_probabilities():
    hist = GapHistogram.from_gaps(np.array([1, 1, 2, 5, 5, 5]), "toy")
    draws = hist.sample(np.random.default_rng(0).random(60_000))
    assert set(np.unique(draws)) == {1, 2, 5}
    assert np.mean(draws == 5) == pytest.approx(0.5, abs=0.01)
    assert hist.survival(np.array([0, 1, 4, 5, 9])).tolist() == pytest.approx([1.0, 2 / 3, 0.5, 0.0, 0.0])


def test_beta_fit_recovers_known_prior():
    rng = np.random.default_rng(1)
    a, b, n = 0.5, 0.9, 4000
    pi = rng.beta(a, b, n)
    returns = np.minimum(rng.geometric(1 - pi) - 1, 300)  # k returns, then churn
    per_user = [list(np.arange(k + 1) * 2) for k in returns]  # gaps of 2 days, far from the data's end
    offset = 1000
    data = days_data([[d + offset for d in days] for days in per_user] + [[offset + 2000]])
    fit = fit_beta(
        active_days(data),
        GapModel(GapHistogram.from_gaps(np.array([2]), "f"), GapHistogram.from_gaps(np.array([2]), "l")),
    )
    assert fit.a == pytest.approx(a, rel=0.15)
    assert fit.b == pytest.approx(b, rel=0.15)


def test_stratified_propensities_follow_the_prior():
    prior = BetaPrior(0.5, 0.9, 0, 0.0)
    draws = prior.sample(np.random.default_rng(0), 2000)
    assert draws.mean() == pytest.approx(0.5 / 1.4, abs=0.005)
    assert np.quantile(draws, 0.25) == pytest.approx(float(stats.beta.ppf(0.25, 0.5, 0.9)), abs=0.01)


def test_slates_serve_unseen_items_once_in_score_order():
    rng = np.random.default_rng(2)
    scores = rng.random((5, 40)).astype(np.float32)
    seen = rng.random((5, 40)) < 0.3
    items, valid = ranked_unseen(scores, seen, 40)
    for u in range(5):
        served = items[u][valid[u]]
        assert len(set(served)) == len(served) == (~seen[u]).sum()
        assert not seen[u, served].any()
        assert np.all(np.diff(scores[u, served]) <= 0)
    value = rng.random((5, 40)).astype(np.float32)
    sat = slate_satisfaction(scores, seen, [value], n_slates=12, k=4)[0]
    for u in range(5):
        served = items[u][valid[u]]
        for n in range(12):  # late slates run out of unseen items: they sum what they hold, or 0
            assert sat[u, n] == pytest.approx(value[u, served[4 * n : 4 * n + 4]].sum())


def test_mf_recovers_low_rank_ratings():
    rng = np.random.default_rng(4)
    p, q = rng.normal(0, 1, (80, 3)), rng.normal(0, 1, (60, 3))
    truth = 3 + 0.3 * rng.normal(0, 1, (80, 1)) + p @ q.T * 0.5
    mask = rng.random(truth.shape) < 0.5
    users, items = np.nonzero(mask)
    model = fit_biased_mf(users, items, truth[mask], 80, 60, MFConfig(dim=3, reg=0.5, iters=30))
    hold_u, hold_i = np.nonzero(~mask)
    rmse = np.sqrt(np.mean((model.predict(hold_u, hold_i) - truth[hold_u, hold_i]) ** 2))
    assert rmse < 0.25 * truth.std()


def toy_model(horizon: int = 20) -> UserModel:
    hist = GapHistogram.from_gaps(np.array([1, 1, 2, 3, 7, 30]), "toy")
    return UserModel(prior=BetaPrior(0.6, 0.8, 0, 0.0), gaps=GapModel(hist, hist), horizon=horizon)


def test_vectorized_simulator_equals_per_user_reference():
    model = toy_model()
    rng = np.random.default_rng(5)
    sat = rng.random((3, 25, model.max_visits))
    s_ref = np.array([0.3, 0.5, 0.4])
    betas = np.array([0.0, 2.0, 5.0])
    draws = draw(model, 25, seed=7)
    out = simulate(sat, s_ref, betas, draws, model)
    ref = simulate_loop(sat, s_ref, betas, draws, model)
    assert np.array_equal(out.first_return, ref[..., 0])
    assert np.array_equal(out.last_visit, ref[..., 1])
    assert np.array_equal(out.visits, ref[..., 2])
    assert np.allclose(out.satisfaction_sum, ref[..., 3])
    assert (out.visits > 1).any() and (out.first_return == NEVER).any()  # both branches exercised


def test_beta_zero_ignores_satisfaction_and_beta_helps_satisfied_users():
    model = toy_model(horizon=60)
    n = 3000
    sat = np.stack([np.full((n, model.max_visits), 0.9), np.full((n, model.max_visits), 0.1)])
    out = metrics(simulate(sat, np.array([0.5, 0.5]), np.array([0.0, 2.0]), draw(model, n, seed=0), model), 60)
    for key in ("d1", "d7", "d30", "active_days"):
        assert out[key][0, 0] == out[key][1, 0]  # beta 0: identical, common random numbers
        assert out[key][0, 1] > out[key][0, 0] > out[key][1, 1]  # beta 2: satisfied gain, dissatisfied lose
