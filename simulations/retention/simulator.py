"""The vectorized user model of docs/protocol.md (section 4), stepped visit by visit for every user at once.

State is held as arrays [policy, beta, user] where a policy is one (arm, oracle) pair, so all arms,
oracles and betas of one seed advance together. Common random numbers: one seed draws every user's
propensity, one uniform per visit for the return decision and one gap per visit, shared by every
policy and beta; at beta = 0 the return probability ignores satisfaction, so all arms get identical
visit histories by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logit

from fedrec.simulations.retention.gaps import GapModel
from fedrec.simulations.retention.propensity import BetaPrior

HORIZON = 60
BETAS = (0.0, 0.5, 2.0, 5.0)
SMOOTHING = 0.7  # weight on the previous smoothed satisfaction
NEVER = np.iinfo(np.int32).max


@dataclass(frozen=True)
class UserModel:
    prior: BetaPrior
    gaps: GapModel
    horizon: int = HORIZON
    smoothing: float = SMOOTHING

    @property
    def max_visits(self) -> int:
        return self.horizon + 1  # at most one visit per day, days 0..horizon

    def to_dict(self) -> dict:
        return {
            "horizon_days": self.horizon,
            "smoothing": self.smoothing,
            "propensity_prior": self.prior.to_dict(),
            "gap_histograms": self.gaps.summary(),
        }


@dataclass(frozen=True)
class Draws:
    """One seed's common random numbers."""

    propensity: np.ndarray  # [n_users]
    uniforms: np.ndarray  # [n_users, max_visits]: return iff uniform < P(return)
    gaps: np.ndarray  # [n_users, max_visits]: days to the next visit if the user returns


def draw(model: UserModel, n_users: int, seed: int) -> Draws:
    rng = np.random.default_rng(seed)
    propensity = np.clip(model.prior.sample(rng, n_users), 1e-9, 1 - 1e-9)
    uniforms = rng.random((n_users, model.max_visits))
    gap_u = rng.random((n_users, model.max_visits))
    gaps = np.concatenate([model.gaps.first.sample(gap_u[:, :1]), model.gaps.later.sample(gap_u[:, 1:])], axis=1)
    return Draws(propensity=propensity, uniforms=uniforms, gaps=gaps)


@dataclass(frozen=True)
class Outcome:
    """Per [policy, beta, user]: what happened within the horizon."""

    first_return: np.ndarray  # day of the first return (NEVER if none within the horizon)
    last_visit: np.ndarray
    visits: np.ndarray  # active days, day 0 included
    satisfaction_sum: np.ndarray


def simulate(satisfaction: np.ndarray, s_ref: np.ndarray, betas: np.ndarray, draws: Draws, model: UserModel) -> Outcome:
    """satisfaction [policy, user, visit]; s_ref [policy]: popularity's mean S under that policy's oracle."""
    n_pol, n_users, _ = satisfaction.shape
    shape = (n_pol, len(betas), n_users)
    day = np.zeros(shape, dtype=np.int32)
    alive = np.ones(shape, dtype=bool)
    smooth = np.broadcast_to(s_ref[:, None, None], shape).astype(np.float64)
    first_return = np.full(shape, NEVER, dtype=np.int32)
    last_visit = np.zeros(shape, dtype=np.int32)
    visits = np.zeros(shape, dtype=np.int32)
    sat_sum = np.zeros(shape, dtype=np.float64)
    base = logit(draws.propensity)[None, None, :]
    tilt = betas[None, :, None]
    ref = s_ref[:, None, None]
    w = model.smoothing
    for n in range(model.max_visits):
        if not alive.any():
            break
        s = satisfaction[:, None, :, n]
        smooth = np.where(alive, w * smooth + (1 - w) * s, smooth)
        visits += alive
        sat_sum += np.where(alive, s, 0.0)
        last_visit = np.where(alive, day, last_visit)
        back = alive & (draws.uniforms[None, None, :, n] < expit(base + tilt * (smooth - ref)))
        day = day + draws.gaps[None, None, :, n].astype(np.int32)
        alive = back & (day <= model.horizon)
        if n == 0:
            first_return = np.where(alive, day, NEVER)
    return Outcome(first_return, last_visit, visits, sat_sum)


def metrics(outcome: Outcome, horizon: int) -> dict[str, np.ndarray]:
    """Per [policy, beta]: d1, d7, d30, mean active days, mean slate satisfaction; survival [policy, beta, day]."""
    out = {f"d{n}": (outcome.first_return <= n).mean(axis=-1) for n in (1, 7, 30)}
    out["active_days"] = outcome.visits.mean(axis=-1)
    out["satisfaction"] = outcome.satisfaction_sum.sum(axis=-1) / np.maximum(outcome.visits.sum(axis=-1), 1)
    days = np.arange(horizon + 1)
    out["survival"] = (outcome.last_visit[..., None] >= days).mean(axis=-2)
    return out
