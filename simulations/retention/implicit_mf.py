"""Weighted matrix factorisation for implicit feedback (Hu, Koren & Volinsky 2008), by ALS.

Every (user, item) cell is a target: 1 where the user interacted, 0 elsewhere, with confidence
1 + alpha on the observed ones. The per-row normal equations are Y'Y + alpha sum_{i in I_u} y_i y_i'
+ reg I, so the dense part Y'Y is shared and only the observed cells enter per row; all rows are built
with one sparse-times-dense product and solved as a batch, like the rating MF in ``mf.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class WRMFConfig:
    dim: int = 24  # with alpha 3, reg 1: most held-out next items in the top 10 on ML-100K among
    alpha: float = 3.0  # dim {16, 24, 32}, alpha {2..20}, reg {0.5..20} (close behind EASE there)
    reg: float = 1.0
    iters: int = 6
    seed: int = 0


def _solve_rows(observed: sp.csr_matrix, features: np.ndarray, config: WRMFConfig) -> np.ndarray:
    k = features.shape[1]
    outer = np.einsum("jd,je->jde", features, features).reshape(len(features), k * k)
    gram = (features.T @ features + config.reg * np.eye(k))[None] + config.alpha * np.asarray(observed @ outer).reshape(
        -1, k, k
    )
    rhs = (1.0 + config.alpha) * np.asarray(observed @ features)
    return np.linalg.solve(gram, rhs[..., None])[..., 0]


def fit_wrmf(
    users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, config: WRMFConfig = WRMFConfig()
) -> np.ndarray:
    """[n_users, n_items] predicted preference x_u . y_i (about 1 for items a user would pick)."""
    rng = np.random.default_rng(config.seed)
    observed = sp.csr_matrix((np.ones(len(users)), (users, items)), shape=(n_users, n_items))
    observed.data[:] = 1.0  # a repeated pair is one interaction
    by_item = observed.T.tocsr()
    item = rng.normal(0, 0.1, (n_items, config.dim))
    user = np.zeros((n_users, config.dim))
    for _ in range(config.iters):
        user = _solve_rows(observed, item, config)
        item = _solve_rows(by_item, user, config)
    return (user @ item.T).astype(np.float32)
