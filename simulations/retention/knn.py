"""Item-based neighbourhood rating model with baselines (Koren 2010, "kNN baseline").

r(u, i) = b(u, i) + sum_j s_ij (r_uj - b_uj) / (sum_j |s_ij| + shrink_to_baseline), over the items j the
user rated among the k most similar items to i; b = mu + b_u + b_i. Similarity is the cosine of the
baseline residuals, shrunk by the number of common raters. A different family from the latent-factor
MF: no factors, predictions are weighted averages of the user's own residuals on similar items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from fedrec.simulations.retention.mf import MFConfig, fit_biased_mf


@dataclass(frozen=True)
class KNNConfig:
    neighbours: int = 50  # with to_baseline 0.1: held-out RMSE on ML-100K level with the biased MF's
    shrink: float = 100.0  # similarity *= n_common / (n_common + shrink)
    to_baseline: float = 0.1  # added to the weight sum: few, weak neighbours leave the baseline standing
    bias_reg: float = 15.0


def fit_item_knn(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    n_users: int,
    n_items: int,
    config: KNNConfig = KNNConfig(),
) -> np.ndarray:
    """[n_users, n_items] predicted rating."""
    biases = fit_biased_mf(users, items, ratings, n_users, n_items, MFConfig(dim=0, reg=config.bias_reg, iters=3))
    baseline = biases.dense()
    shape = (n_users, n_items)
    resid = sp.csr_matrix(((ratings - baseline[users, items]).astype(np.float32), (users, items)), shape=shape)
    rated = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=shape)
    norms = np.sqrt(np.asarray(resid.multiply(resid).sum(axis=0)).ravel()) + 1e-9
    common = (rated.T @ rated).toarray()
    sim = (resid.T @ resid).toarray() / np.outer(norms, norms) * common / (common + config.shrink)
    np.fill_diagonal(sim, 0.0)
    k = min(config.neighbours, n_items - 1)
    if k < n_items - 1:  # keep each target item's k most similar items (columns: target, rows: neighbour)
        cut = -np.partition(-sim, k - 1, axis=0)[k - 1]
        sim = np.where(sim >= cut[None, :], sim, 0.0)
    sim = np.maximum(sim, 0.0).astype(np.float32)
    return baseline + np.asarray(resid @ sim) / (np.asarray(rated @ sim) + config.to_baseline)
