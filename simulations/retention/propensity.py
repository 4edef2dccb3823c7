"""Per-user return propensity pi_u ~ Beta(a, b), fitted by maximum likelihood to the dataset.

Each active day is a trial: the user comes back (another active day follows) or churns. A user with
k returns contributes pi^k * P(no further return seen). The dataset ends, so "no further return seen"
is either churn or a gap longer than the time left: (1 - pi) + pi * P(gap > days left), with the gap
survival from the empirical histograms. Integrating pi over the Beta prior gives a closed form in Beta
functions, maximised over (log a, log b).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

from fedrec.common.errors import DataError
from fedrec.simulations.retention.gaps import GapModel
from fedrec.simulations.retention.observed import ActiveDays


@dataclass(frozen=True)
class BetaPrior:
    a: float
    b: float
    n_users: int
    nll: float

    @property
    def mean(self) -> float:
        return self.a / (self.a + self.b)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Stratified draws (one per 1/n quantile band, in random order): the cohort's mean propensity then
        barely varies between seeds, which would otherwise dominate the noise of the simulated d30."""
        quantiles = (rng.permutation(n) + rng.random(n)) / n
        return stats.beta.ppf(quantiles, self.a, self.b)

    def to_dict(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "mean": self.mean,
            "n_users": self.n_users,
            "neg_log_lik": self.nll,
            "method": "Beta-geometric MLE, censored at the dataset's last day",
        }


def _neg_log_lik(log_ab: np.ndarray, returns: np.ndarray, censor_survival: np.ndarray) -> float:
    a, b = np.exp(log_ab)
    base = special.betaln(a, b)
    churned = special.betaln(a + returns, b + 1.0) - base
    still_away = special.betaln(a + returns + 1.0, b) - base + np.log(np.maximum(censor_survival, 1e-300))
    return -float(np.logaddexp(churned, still_away).sum())


def fit_beta(days: ActiveDays, gaps: GapModel) -> BetaPrior:
    returns = (days.counts - 1).astype(np.float64)
    left = days.last_day - days.last
    survival = np.where(returns == 0, gaps.first.survival(left), gaps.later.survival(left))
    if not (returns > 0).any():
        raise DataError("cannot fit return propensities: no user is active on more than one day")
    res = optimize.minimize(
        _neg_log_lik, x0=np.zeros(2), args=(returns, survival), method="L-BFGS-B", bounds=[(-8.0, 8.0), (-8.0, 8.0)]
    )
    a, b = np.exp(res.x)
    return BetaPrior(a=float(a), b=float(b), n_users=int(days.n_users), nll=float(res.fun))
