"""Biased matrix factorisation (r = mu + b_u + c_i + p_u . q_i) by alternating least squares.

Each half-step is a ridge regression per user (or item); the per-row normal equations are built for
all rows at once with one sparse-times-dense product and solved as a batch, so a fit on ML-100K takes
about a second of numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class MFConfig:
    dim: int = 16  # with reg 15: lowest held-out RMSE on ML-100K among dim {16, 32} x reg {2..25}
    reg: float = 15.0
    iters: int = 15
    seed: int = 0


@dataclass(frozen=True)
class BiasedMF:
    mu: float
    user: np.ndarray  # [n_users, dim + 1]: factors, then the user bias
    item: np.ndarray  # [n_items, dim + 1]: factors, then the item bias

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        u, i = self.user[users], self.item[items]
        return self.mu + u[:, -1] + i[:, -1] + np.einsum("nd,nd->n", u[:, :-1], i[:, :-1])

    def dense(self) -> np.ndarray:
        """Predicted rating for every (user, item)."""
        return (self.mu + self.user[:, -1:] + self.item[None, :, -1] + self.user[:, :-1] @ self.item[:, :-1].T).astype(
            np.float32
        )


def _ridge_rows(design: sp.csr_matrix, targets: sp.csr_matrix, features: np.ndarray, reg: float) -> np.ndarray:
    """For every row r: argmin_w sum_j (y_rj - x_j . w)^2 + reg |w|^2 over the columns j the row observed."""
    k = features.shape[1]
    outer = np.einsum("jd,je->jde", features, features).reshape(len(features), k * k)
    gram = np.asarray(design @ outer).reshape(-1, k, k) + reg * np.eye(k)
    rhs = np.asarray(targets @ features)
    return np.linalg.solve(gram, rhs[..., None])[..., 0]


def fit_biased_mf(
    users: np.ndarray, items: np.ndarray, ratings: np.ndarray, n_users: int, n_items: int, config: MFConfig = MFConfig()
) -> BiasedMF:
    rng = np.random.default_rng(config.seed)
    ratings = ratings.astype(np.float64)
    mu = float(ratings.mean())
    shape = (n_users, n_items)
    ones = sp.csr_matrix((np.ones(len(users)), (users, items)), shape=shape)
    user = np.hstack([rng.normal(0, 0.1, (n_users, config.dim)), np.zeros((n_users, 1))])
    item = np.hstack([rng.normal(0, 0.1, (n_items, config.dim)), np.zeros((n_items, 1))])
    for _ in range(config.iters):
        # users: features [q_i, 1] against r - mu - c_i
        resid = sp.csr_matrix((ratings - mu - item[items, -1], (users, items)), shape=shape)
        user = _ridge_rows(ones, resid, np.hstack([item[:, :-1], np.ones((n_items, 1))]), config.reg)
        # items: features [p_u, 1] against r - mu - b_u
        resid = sp.csr_matrix((ratings - mu - user[users, -1], (items, users)), shape=shape[::-1])
        item = _ridge_rows(ones.T.tocsr(), resid, np.hstack([user[:, :-1], np.ones((n_users, 1))]), config.reg)
    return BiasedMF(mu=mu, user=user, item=item)
