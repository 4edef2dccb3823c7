"""Empirical day-gap histograms: how many days pass before a returning user comes back.

Two histograms, because the first return behaves differently from later ones (docs/protocol.md): the gap
from the first to the second active day, and every later gap. Only gaps that start at least
``follow_up`` days before the dataset's last day count, so late starters (who can only show short
gaps) do not pull the histograms towards short gaps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.common.errors import DataError
from fedrec.simulations.retention.observed import COHORT_FOLLOW_UP, ActiveDays


@dataclass(frozen=True)
class GapHistogram:
    """P(gap = d days) for d = 1..len(probs); sampled by inverse CDF so one uniform gives one gap."""

    probs: np.ndarray
    n_gaps: int

    @classmethod
    def from_gaps(cls, gaps: np.ndarray, name: str) -> GapHistogram:
        if len(gaps) == 0:
            raise DataError(f"no {name} day gaps in the dataset: every user is active on a single day")
        counts = np.bincount(gaps.astype(np.int64))[1:].astype(np.float64)
        return cls(probs=counts / counts.sum(), n_gaps=int(len(gaps)))

    @property
    def cdf(self) -> np.ndarray:
        return np.cumsum(self.probs)

    def survival(self, days: np.ndarray) -> np.ndarray:
        """P(gap > days)."""
        cdf = np.concatenate([[0.0], self.cdf])
        return 1.0 - cdf[np.clip(days, 0, len(self.probs))]

    def sample(self, uniforms: np.ndarray) -> np.ndarray:
        """Gaps (>= 1 day) for an array of uniforms in [0, 1)."""
        cdf = self.cdf
        cdf[-1] = 1.0  # guard against rounding leaving a uniform above the last bin
        return np.searchsorted(cdf, uniforms, side="right").astype(np.int64) + 1

    def share_within(self, days: int) -> float:
        return float(self.probs[:days].sum())


@dataclass(frozen=True)
class GapModel:
    first: GapHistogram
    later: GapHistogram

    def summary(self) -> dict:
        return {
            name: {"n_gaps": h.n_gaps, **{f"p_le_{d}": h.share_within(d) for d in (1, 7, 30, 60)}}
            for name, h in (("first", self.first), ("later", self.later))
        }


def fit_gaps(days: ActiveDays, follow_up: int = COHORT_FOLLOW_UP) -> GapModel:
    users, index, gap = days.gaps()
    start = days.days[days.starts[users] + index]
    keep = start <= days.last_day - follow_up
    return GapModel(
        first=GapHistogram.from_gaps(gap[keep & (index == 0)], "first-return"),
        later=GapHistogram.from_gaps(gap[keep & (index > 0)], "later-return"),
    )
