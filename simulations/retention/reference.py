"""docs/protocol.md's user model written as the plain per-user loop, one visit at a time.

Slow on purpose: the vectorized simulator must produce exactly these outcomes (tests), and the benchmark
measures how much faster the vectorized one is on the same draws.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, logit

from fedrec.simulations.retention.simulator import NEVER, Draws, UserModel


def simulate_user(
    sat: np.ndarray, s_ref: float, beta: float, pi: float, uniforms: np.ndarray, gaps: np.ndarray, model: UserModel
) -> tuple[int, int, int, float]:
    """(first return day or NEVER, last visit day, visits, summed slate satisfaction) of one user."""
    day, smooth, visits, total, first, last = 0, s_ref, 0, 0.0, NEVER, 0
    for n in range(model.max_visits):
        s = float(sat[n])
        smooth = model.smoothing * smooth + (1 - model.smoothing) * s
        visits, total, last = visits + 1, total + s, day
        if not uniforms[n] < expit(logit(pi) + beta * (smooth - s_ref)):
            break
        day += int(gaps[n])
        if day > model.horizon:
            break
        if n == 0:
            first = day
    return first, last, visits, total


def simulate_loop(
    satisfaction: np.ndarray, s_ref: np.ndarray, betas: np.ndarray, draws: Draws, model: UserModel
) -> np.ndarray:
    """[policy, beta, user, 4]: ``simulate_user`` for every cell."""
    n_pol, n_users, _ = satisfaction.shape
    out = np.zeros((n_pol, len(betas), n_users, 4))
    for p in range(n_pol):
        for b, beta in enumerate(betas):
            for u in range(n_users):
                out[p, b, u] = simulate_user(
                    satisfaction[p, u], s_ref[p], beta, draws.propensity[u], draws.uniforms[u], draws.gaps[u], model
                )
    return out
