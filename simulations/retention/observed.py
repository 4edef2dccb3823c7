"""Observed return behaviour, read from the dataset's own timestamps (UTC days).

Everything the simulator is calibrated on comes from here: each user's sorted active days, the cohort
with enough follow-up to observe a return, and the observed d1/d7/d30 that the simulated cohort at
beta = 0 must reproduce (docs/protocol.md, section 4, point 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.common.datasets import Interactions

SECONDS_PER_DAY = 86_400
COHORT_FOLLOW_UP = 30  # days of follow-up a user needs to count in the observed d1/d7/d30
DAYS = (1, 7, 30)


@dataclass(frozen=True)
class ActiveDays:
    """Distinct UTC days on which each user interacted, as one flat sorted array with user offsets."""

    days: np.ndarray  # int64, sorted by (user, day), one entry per distinct (user, day)
    starts: np.ndarray  # [n_users + 1] offsets into ``days``
    last_day: int  # the dataset's last day

    @property
    def n_users(self) -> int:
        return len(self.starts) - 1

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.starts)

    @property
    def first(self) -> np.ndarray:
        return self.days[self.starts[:-1]]

    @property
    def last(self) -> np.ndarray:
        return self.days[self.starts[1:] - 1]

    def follow_up(self) -> np.ndarray:
        """Days between each user's first active day and the dataset's last day."""
        return self.last_day - self.first

    def gaps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every gap between consecutive active days: (user, index of the gap within the user, gap)."""
        same_user = np.repeat(np.arange(self.n_users), self.counts)
        nxt = np.flatnonzero(same_user[1:] == same_user[:-1])
        users = same_user[nxt]
        index = nxt - self.starts[users]
        return users, index, self.days[nxt + 1] - self.days[nxt]


def active_days(data: Interactions) -> ActiveDays:
    day = data.timestamps // SECONDS_PER_DAY
    key = np.unique(data.users * (int(day.max()) + 1) + day)
    users, days = np.divmod(key, int(day.max()) + 1)
    counts = np.bincount(users, minlength=data.n_users)
    starts = np.concatenate([[0], np.cumsum(counts)])
    return ActiveDays(days=days.astype(np.int64), starts=starts, last_day=int(day.max()))


def first_return(days: ActiveDays) -> np.ndarray:
    """Days from each user's first to second active day (a large sentinel where there is none)."""
    out = np.full(days.n_users, np.iinfo(np.int64).max // 2, dtype=np.int64)
    has = days.counts > 1
    out[has] = days.days[days.starts[:-1][has] + 1] - days.first[has]
    return out


def observed_retention(days: ActiveDays, follow_up: int = COHORT_FOLLOW_UP) -> dict:
    """d1 = active the day after the first; dN = active on some day in (first, first + N]."""
    cohort = days.follow_up() >= follow_up
    gap = first_return(days)[cohort]
    out = {f"d{n}": float(np.mean(gap <= n)) if cohort.any() else float("nan") for n in DAYS}
    out["n_users"] = int(cohort.sum())
    return out


def observed_survival(days: ActiveDays, horizon: int) -> dict:
    """Share of users with an active day in [first + t, first + horizon], t = 0..horizon, and mean active days.

    Only users with ``horizon`` days of follow-up count, so nothing is cut off by the dataset's end.
    """
    cohort = np.flatnonzero(days.follow_up() >= horizon)
    if len(cohort) == 0:
        return {"n_users": 0, "survival": [], "active_days": float("nan")}
    user_of = np.repeat(np.arange(days.n_users), days.counts)
    offset = days.days - days.first[user_of]
    inside = np.isin(user_of, cohort) & (offset <= horizon)
    last_offset = np.zeros(days.n_users, dtype=np.int64)
    np.maximum.at(last_offset, user_of[inside], offset[inside])
    t = np.arange(horizon + 1)
    survival = (last_offset[cohort][:, None] >= t[None, :]).mean(axis=0)
    return {
        "n_users": int(len(cohort)),
        "survival": survival.tolist(),
        "active_days": float(inside.sum() / len(cohort)),
    }
