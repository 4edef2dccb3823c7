"""Empirical epsilon lower bound from one training run (Steinke, Nasr and Jagielski, NeurIPS 2023).

m canaries are each included with probability 1/2; the auditor guesses "in" or "out" for r of them
(abstaining on the rest) and gets v right. Under (eps, delta)-DP the number of correct guesses is
dominated by Binomial(r, e^eps / (1 + e^eps)) plus a delta term (their Theorem 3.1 / Algorithm 2);
the bound is the largest eps the test still rejects at the chosen confidence. The guess count must be
fixed before looking at the outcome, otherwise the confidence level does not hold.
"""

from __future__ import annotations

import math

from scipy import stats

SEARCH_STEPS = 40  # bisection steps: the bound is accurate to 2**-40 of its bracket


def p_value(m: int, r: int, v: int, eps: float, delta: float = 0.0) -> float:
    """P[at least v of r guesses correct] under the null hypothesis that the run is (eps, delta)-DP."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})")
    if eps < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need eps >= 0 and 0 <= delta <= 1, got eps={eps}, delta={delta}")
    q = 1.0 / (1.0 + math.exp(-eps))  # accuracy of eps-DP randomized response
    tail = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    # delta term: alpha = max_i P[v - i <= Binomial(r, q) < v] / i, times 2 m delta.
    alpha, mass = 0.0, 0.0
    if delta > 0:
        for i in range(1, v + 1):
            mass += float(stats.binom.pmf(v - i, r, q))
            alpha = max(alpha, mass / i)
    return min(1.0, tail + alpha * delta * 2 * m)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float = 0.0, confidence: float = 0.95) -> float:
    """Largest eps such that "the run is (eps, delta)-DP" is rejected at ``confidence``; 0 if none is."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    alpha = 1.0 - confidence
    if r == 0 or p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    lo, hi = 0.0, 1.0  # invariant: p_value(lo) < alpha <= p_value(hi)
    while p_value(m, r, v, hi, delta) < alpha:
        lo, hi = hi, 2 * hi
        if hi > 1e4:  # v == r with delta == 0 and huge r would never stop; no run certifies that much
            return lo
    for _ in range(SEARCH_STEPS):
        mid = (lo + hi) / 2
        if p_value(m, r, v, mid, delta) < alpha:
            lo = mid
        else:
            hi = mid
    return lo


def ceiling(m: int, r: int, delta: float = 0.0, confidence: float = 0.95) -> float:
    """The highest bound r guesses could ever show: every guess correct."""
    return epsilon_lower_bound(m, r, r, delta, confidence)
