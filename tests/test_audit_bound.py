"""The one-run epsilon lower bound (Steinke, Nasr and Jagielski 2023) against cases checked by hand."""

from __future__ import annotations

import math

import pytest
from scipy import optimize, stats

from fedrec.simulations.audit.bound import ceiling, epsilon_lower_bound, p_value


def logit(q: float) -> float:
    return math.log(q / (1 - q))


def test_all_correct_matches_closed_form():
    # r = v: P[Bin(r, q) >= r] = q^r = 0.05  =>  q = 0.05^(1/r), eps = log(q / (1 - q)).
    # r = 10: q = 0.74113, eps = log(2.8628) = 1.0519.
    assert epsilon_lower_bound(10, 10, 10) == pytest.approx(1.0519, abs=1e-4)
    for r in (10, 50, 200):
        assert epsilon_lower_bound(1000, r, r) == pytest.approx(logit(0.05 ** (1 / r)), rel=1e-6)


def test_one_wrong_matches_an_independent_root_find():
    # v = r - 1: q^r + r q^(r-1) (1 - q) = 0.05, solved for q with brentq instead of the module's bisection.
    r = 40
    q = optimize.brentq(lambda q: q**r + r * q ** (r - 1) * (1 - q) - 0.05, 0.5, 1 - 1e-12)
    assert epsilon_lower_bound(100, r, r - 1) == pytest.approx(logit(q), rel=1e-6)


def test_no_evidence_gives_zero():
    assert epsilon_lower_bound(100, 0, 0) == 0.0  # every canary abstained
    assert epsilon_lower_bound(100, 1, 1) == 0.0  # one right guess is a coin flip (p = 0.5)
    assert epsilon_lower_bound(100, 40, 20) == 0.0  # chance accuracy
    assert epsilon_lower_bound(100, 40, 25) == 0.0  # 25/40 is not significant at 95%: P[Bin(40,.5)>=25] = 0.077
    assert stats.binom.sf(24, 40, 0.5) > 0.05


def test_bound_sits_where_the_test_stops_rejecting():
    m, r, v = 1000, 100, 90
    eps = epsilon_lower_bound(m, r, v)
    assert p_value(m, r, v, eps) < 0.05 <= p_value(m, r, v, eps + 1e-6)
    # more correct guesses, or the same accuracy over more guesses, certify more
    assert epsilon_lower_bound(m, r, v + 5) > eps
    assert epsilon_lower_bound(m, 2 * r, 2 * v) > eps


def test_delta_only_weakens_the_bound_and_confidence_matters():
    base = epsilon_lower_bound(1000, 100, 95)
    with_delta = epsilon_lower_bound(1000, 100, 95, delta=1e-5)
    assert with_delta <= base and with_delta == pytest.approx(base, abs=0.05)
    assert epsilon_lower_bound(1000, 100, 95, delta=1e-3) < with_delta
    assert epsilon_lower_bound(1000, 100, 95, confidence=0.99) < base


def test_ceiling_is_the_all_correct_bound():
    assert ceiling(1000, 200) == epsilon_lower_bound(1000, 200, 200)
    assert ceiling(1000, 200) > ceiling(1000, 100) > ceiling(1000, 20)
    # m canaries can never certify more than their ceiling, whatever the split of right answers
    assert all(epsilon_lower_bound(1000, 100, v, 1e-5) <= ceiling(1000, 100, 1e-5) for v in range(0, 101, 10))


@pytest.mark.parametrize("args", [(10, 11, 5), (10, 5, 6), (10, 5, -1)])
def test_impossible_counts_raise(args):
    with pytest.raises(ValueError):
        p_value(*args, eps=1.0)
