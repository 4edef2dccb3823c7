"""What the generator knows about a source dataset: small arrays and scalars, no interactions.

Everything here is fitted by ``synth.fit`` and read by ``synth.generate``; a ``SynthStats`` for ML-100K
is all it takes to write a population of any size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.simulations.retention.gaps import GapModel


@dataclass(frozen=True)
class ActivityProfiles:
    """One row per source user, resampled together so that activity, active days and start stay coupled."""

    interactions: np.ndarray  # int64 interactions of the user
    active_days: np.ndarray  # int64 distinct UTC days with an interaction
    start_day: np.ndarray  # int64 first active day, in days after the dataset's first day
    first_day_share: np.ndarray  # float64 share of the user's interactions on the first active day


@dataclass(frozen=True)
class TasteModel:
    """Item biases and a Gaussian law of user and item factors (see ``synth.factors``)."""

    bias_quantiles: np.ndarray  # fitted item biases, ascending
    item_coef: np.ndarray  # [3, rank]: mean item factor given its bias b is coef^T [1, b, b^2]
    item_chol: np.ndarray  # [rank, rank] Cholesky factor of the item factors' residual covariance
    user_mean: np.ndarray  # [rank]
    user_chol: np.ndarray  # [rank, rank] Cholesky factor of the user factors' covariance
    heldout_loglik: float
    popularity_loglik: float
    strength: float = 1.0  # multiplier on the user factors, fitted so that ``validation_lift`` matches the source

    @property
    def rank(self) -> int:
        return len(self.user_mean)


@dataclass(frozen=True)
class RatingModel:
    """Latent score = user offset + item offset + noise, cut into the source's rating levels at its shares."""

    levels: np.ndarray  # float32 rating values, ascending
    shares: np.ndarray  # float64 share of interactions at each level
    user_sd: float
    item_slope: float  # item offset per standard deviation of the item's bias (popular items rate higher)
    item_sd: float  # item offset left after the slope
    noise_sd: float


@dataclass(frozen=True)
class SynthStats:
    source: str
    n_users: int
    n_items: int
    n_interactions: int
    lorenz: np.ndarray  # [n_items + 1] Lorenz curve of item popularity (share of interactions, items ascending)
    max_user_share: float  # most interactions of one user, as a share of the catalogue
    profiles: ActivityProfiles
    taste: TasteModel
    ratings: RatingModel
    gaps: GapModel
    first_day: int  # the source's first UTC day (unix days)
    window_days: int  # last day minus first day
    validation_lift: float  # source's EASE-over-popularity HR@10 ratio at the validation position (synth.measure)
    heldout_shift: float  # source's log popularity of validation items minus that of all items (synth.measure)
    order_spread: float  # time-order noise that reproduces ``heldout_shift`` (see synth.generate)
