"""Fit ``SynthStats`` to a dataset (ML-100K by default): each statistic read the way the harness reads it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from fedrec.common.datasets import Interactions
from fedrec.common.errors import DataError
from fedrec.simulations.retention.gaps import fit_gaps
from fedrec.simulations.retention.observed import SECONDS_PER_DAY, active_days
from fedrec.simulations.synth.factors import FactorModel, fit_factors
from fedrec.simulations.synth.generate import interactions, population, synthesize
from fedrec.simulations.synth.measure import heldout_shift, validation_lift
from fedrec.simulations.synth.model import ActivityProfiles, RatingModel, SynthStats, TasteModel

SPREAD_BRACKET = (0.25, 16.0)  # in standard deviations of the item bias
STRENGTH_BRACKET = (0.5, 4.0)
CALIBRATION_STEPS = 6
RATING_SWEEPS = 10


def _profiles(data: Interactions) -> ActivityProfiles:
    days = active_days(data)
    day = data.timestamps // SECONDS_PER_DAY
    counts = np.bincount(data.users, minlength=data.n_users)
    on_first = np.bincount(data.users, weights=day == days.first[data.users], minlength=data.n_users)
    return ActivityProfiles(
        interactions=counts.astype(np.int64),
        active_days=days.counts.astype(np.int64),
        start_day=(days.first - day.min()).astype(np.int64),
        first_day_share=on_first / counts,
    )


def _taste(model: FactorModel) -> TasteModel:
    order = np.argsort(model.bias)
    bias = model.bias[order]
    design = np.stack([np.ones_like(bias), bias, bias**2], axis=1)
    coef, *_ = np.linalg.lstsq(design, model.items[order], rcond=None)
    residual = model.items[order] - design @ coef
    rank = model.users.shape[1]
    jitter = 1e-9 * np.eye(rank)  # keeps Cholesky defined if a component is degenerate
    return TasteModel(
        bias_quantiles=bias,
        item_coef=coef,
        item_chol=np.linalg.cholesky(np.cov(residual.T) + jitter),
        user_mean=model.users.mean(axis=0),
        user_chol=np.linalg.cholesky(np.cov(model.users.T) + jitter),
        heldout_loglik=model.heldout_loglik,
        popularity_loglik=model.popularity_loglik,
    )


def _ratings(data: Interactions, bias: np.ndarray) -> RatingModel:
    """Additive user + item offsets by alternating means; item offsets regressed on the item's bias."""
    r = data.ratings.astype(np.float64)
    mu, user, item = r.mean(), np.zeros(data.n_users), np.zeros(data.n_items)
    n_u = np.bincount(data.users, minlength=data.n_users)
    n_i = np.bincount(data.items, minlength=data.n_items)
    for _ in range(RATING_SWEEPS):
        user = np.bincount(data.users, r - mu - item[data.items], data.n_users) / n_u
        item = np.bincount(data.items, r - mu - user[data.users], data.n_items) / (n_i + 5.0)  # shrink rare items
    z = (bias - bias.mean()) / bias.std()
    slope = float(np.polyfit(z, item, 1, w=np.sqrt(n_i))[0])
    levels, counts = np.unique(r, return_counts=True)
    return RatingModel(
        levels=levels.astype(np.float32),
        shares=counts / counts.sum(),
        user_sd=float(user.std()),
        item_slope=slope,
        item_sd=float(np.std(item - slope * z)),
        noise_sd=float(np.std(r - mu - user[data.users] - item[data.items])),
    )


def _bisect(
    evaluate: Callable[[float], float], target: float, bracket: tuple[float, float], steps: int = CALIBRATION_STEPS
) -> float:
    """Log-scale bisection for an ``evaluate`` that increases with its argument."""
    lo, hi = np.log(bracket[0]), np.log(bracket[1])
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if evaluate(float(np.exp(mid))) < target:
            lo = mid
        else:
            hi = mid
    return float(np.exp(0.5 * (lo + hi)))


def _calibrated(stats: SynthStats, seed: int) -> SynthStats:
    """Time-order noise, then taste strength, then the noise again (the two interact), on source-sized samples.

    A Gaussian taste law spreads ML-100K's few strong taste directions thin, so at strength 1 EASE gains
    far less over popularity than on ML-100K; the strength restores that gain where the protocol
    measures it (``validation_lift``). Only validation positions are used: the test items stay unseen."""
    size = (stats.n_users, stats.n_items, seed)

    def with_spread(stats: SynthStats) -> SynthStats:
        pop = population(stats, *size)
        spread = _bisect(
            lambda s: heldout_shift(interactions(stats, replace(pop, order_spread=s))),
            stats.heldout_shift,
            SPREAD_BRACKET,
        )
        return replace(stats, order_spread=spread)

    def lift(strength: float) -> float:
        return validation_lift(synthesize(replace(stats, taste=replace(stats.taste, strength=strength)), *size))

    stats = with_spread(stats)
    stats = replace(stats, taste=replace(stats.taste, strength=_bisect(lift, stats.validation_lift, STRENGTH_BRACKET)))
    return with_spread(stats)


def fit_synth(data: Interactions, seed: int = 0, calibrate: bool = True) -> SynthStats:
    """Needs ratings and timestamps. ``calibrate=False`` skips fitting taste strength and time order (both
    by generating source-sized samples, most of the fit's time) and leaves them at 1."""
    if not np.isfinite(data.ratings).all():
        raise DataError(f"{data.name}: the generator is fitted to ratings, and some interactions have none")
    model = fit_factors(data, seed)
    popularity = np.sort(np.bincount(data.items, minlength=data.n_items)).astype(np.float64)
    day = data.timestamps // SECONDS_PER_DAY
    profiles = _profiles(data)
    stats = SynthStats(
        source=data.name,
        n_users=data.n_users,
        n_items=data.n_items,
        n_interactions=len(data),
        lorenz=np.concatenate([[0.0], np.cumsum(popularity) / popularity.sum()]),
        max_user_share=float(profiles.interactions.max() / data.n_items),
        profiles=profiles,
        taste=_taste(model),
        ratings=_ratings(data, model.bias),
        gaps=fit_gaps(active_days(data)),
        first_day=int(day.min()),
        window_days=int(day.max() - day.min()),
        validation_lift=validation_lift(data),
        heldout_shift=heldout_shift(data),
        order_spread=1.0,
    )
    return _calibrated(stats, seed) if calibrate else stats
