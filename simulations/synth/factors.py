"""A multinomial low-rank taste model: P(user u picks item i) is softmax_i(b_i + u . v_i).

The factors come from a truncated SVD of the degree-normalised user-item matrix (the leading,
popularity-only component dropped), scaled by a temperature; the item biases then solve the
multinomial likelihood equations (expected count = observed count). Rank and temperature are chosen on
held-out interactions, so a synthetic population carries the part of the taste structure that
generalises. Closed form and about a second on ML-100K, which matters because every `fedrec data
synth` fits afresh (fitted factors are derived from the data and are never stored in the repository).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix, diags
from scipy.sparse.linalg import svds
from scipy.special import log_softmax

from fedrec.common.datasets import Interactions

RANKS = (8, 16, 32)
TEMPERATURES = (0.6, 0.8, 1.0)


@dataclass(frozen=True)
class FactorModel:
    bias: np.ndarray  # [n_items]
    users: np.ndarray  # [n_users, rank]
    items: np.ndarray  # [n_items, rank]
    heldout_loglik: float  # mean held-out log-probability of the chosen rank and temperature
    popularity_loglik: float  # the same for popularity alone: the floor the taste model must beat


def binary_matrix(data: Interactions) -> np.ndarray:
    x = np.zeros((data.n_users, data.n_items), dtype=np.float64)
    x[data.users, data.items] = 1.0
    return x


def fit_bias(x: np.ndarray, affinity: np.ndarray, iterations: int = 10) -> np.ndarray:
    """Item biases whose expected counts under softmax(b + affinity) match the observed counts."""
    counts, picks = x.sum(axis=0), x.sum(axis=1, keepdims=True)
    bias = np.log(counts + 0.5)
    for _ in range(iterations):
        expected = (picks * np.exp(log_softmax(bias + affinity, axis=1))).sum(axis=0)
        bias += np.log((counts + 0.5) / (expected + 0.5))
    return bias - bias.mean()


def normalized(x: np.ndarray | csr_matrix) -> csr_matrix:
    """D_u^-1/2 X D_i^-1/2 (degrees + 1), sparse, so that a 100k-user population fits in memory."""
    x = csr_matrix(x)
    rows = 1.0 / np.sqrt(np.asarray(x.sum(axis=1)).ravel() + 1.0)
    cols = 1.0 / np.sqrt(np.asarray(x.sum(axis=0)).ravel() + 1.0)
    return csr_matrix(diags(rows) @ x @ diags(cols))


def taste_components(x: np.ndarray | csr_matrix, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top ``rank`` singular triplets after the first of D_u^-1/2 X D_i^-1/2 (the first is degree only),
    largest first, so that a smaller rank is a prefix."""
    u, s, vt = svds(normalized(x), k=rank + 1, random_state=0)
    order = np.argsort(-s)[1:]
    return u[:, order], s[order], vt[order].T


def _factors(
    components: tuple[np.ndarray, np.ndarray, np.ndarray], rank: int, temperature: float
) -> tuple[np.ndarray, np.ndarray]:
    u, s, v = (c[..., :rank] for c in components)
    scale = temperature / float(((u * s) @ v.T).std())  # temperature in units of the affinity's spread
    root = np.sqrt(s * scale)
    return u * root, v * root


def _split(x: np.ndarray, rng: np.random.Generator, share: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Each user's interactions split at random: ``share`` held out (at least one), the rest kept."""
    held = np.zeros_like(x)
    for user in range(x.shape[0]):
        items = np.flatnonzero(x[user])
        held[user, rng.choice(items, size=max(1, int(round(share * len(items)))), replace=False)] = 1.0
    return x - held, held


def heldout_loglik(train: np.ndarray, held: np.ndarray, logits: np.ndarray) -> float:
    """Mean log-probability of a held-out item among the items the user has not picked in train."""
    log_p = log_softmax(np.where(train > 0, -np.inf, logits), axis=1)
    return float(np.where(held > 0, log_p, 0.0).sum() / held.sum())


def fit_factors(data: Interactions, seed: int = 0) -> FactorModel:
    x = binary_matrix(data)
    train, held = _split(x, np.random.default_rng(seed))
    components = taste_components(train, max(RANKS))
    scores = {}
    for rank in RANKS:
        for temperature in TEMPERATURES:
            users, items = _factors(components, rank, temperature)
            affinity = users @ items.T
            scores[(rank, temperature)] = heldout_loglik(train, held, fit_bias(train, affinity) + affinity)
    rank, temperature = max(scores, key=scores.__getitem__)
    users, items = _factors(taste_components(x, rank), rank, temperature)
    return FactorModel(
        bias=fit_bias(x, users @ items.T),
        users=users,
        items=items,
        heldout_loglik=scores[(rank, temperature)],
        popularity_loglik=heldout_loglik(train, held, fit_bias(train, np.zeros_like(train))),
    )
