"""The pieces of the DP-SGD recipe (docs/dp-search.md) that the pooled arm and the federated one share:
item rows from public features, the popularity prior computed from a released Gaussian histogram, and the
noise multiplier of DP-SGD steps composed with that release in one RDP history."""

from __future__ import annotations

import math

import numpy as np
import torch

from fedrec.common.datasets import load_dataset
from fedrec.common.errors import FedrecError
from fedrec.common.item_features import ml100k_item_features
from fedrec.common.privacy import history_epsilon, noise_for_budget


def histogram_entry(count_sigma: float) -> list[tuple[float, float, int]]:
    """The DP item-count release as an accountant entry: one Gaussian step at sampling rate 1 (each record
    adds 1 to one count: L2 sensitivity 1); none when no histogram is released."""
    return [(float(count_sigma), 1.0, 1)] if count_sigma > 0 else []


def composed_noise(epsilon: float, delta: float, count_sigma: float, q: float, steps: int, source: str) -> float:
    """Smallest DP-SGD noise multiplier whose ``steps`` at rate ``q``, composed with the histogram release,
    stay within epsilon (RDP)."""
    released = histogram_entry(count_sigma)
    if not released:
        return noise_for_budget(epsilon, delta, q, steps)
    if history_epsilon(tuple(released), delta) >= epsilon:
        raise FedrecError(f"{source}: count_sigma {count_sigma} alone spends epsilon {epsilon}")
    low, high = 0.0, 1.0
    while history_epsilon(tuple(released + [(high, q, steps)]), delta) > epsilon:
        low, high = high, 2 * high
    while high - low > 1e-3 * high:
        mid = (low + high) / 2
        fits = history_epsilon(tuple(released + [(mid, q, steps)]), delta) <= epsilon
        low, high = (low, mid) if fits else (mid, high)
    return high


def log_odds_prior(noisy: torch.Tensor, negatives: int) -> torch.Tensor:
    """log of the odds a uniform negative sampler implies, (count / total) / (negatives / n_items), computed
    from the released counts alone (their sum stands in for the number of records)."""
    counts = noisy.clamp(min=0) + 1
    return torch.log(counts * len(counts) / (counts.sum() * negatives)).float()


def feature_rows(features: np.ndarray, dim: int, scale: float, seed: int) -> torch.Tensor:
    """[n_items, dim] rows spanned by the top singular directions of the centred features, mean row norm
    ``scale * sqrt(dim)``; columns beyond the features' rank are filled with noise of std ``scale``."""
    x = torch.from_numpy(features - features.mean(axis=0)).double()
    # U S from the eigenvectors of the small Gram matrix, in torch: numpy's multithreaded OpenBLAS SVD of the
    # tall matrix hung (busy-waiting in exec_blas) in a server thread beside Ray's.
    values, vectors = torch.linalg.eigh(x.T @ x)
    order = torch.argsort(values, descending=True)
    singular = values[order].clamp(min=0).sqrt()
    k = min(dim, int((singular > 1e-6).sum()))
    top = x @ vectors[:, order[:k]]
    top = top * torch.sign(top[top.abs().argmax(dim=0), torch.arange(k)])  # one sign per direction, fixed
    rows = np.random.default_rng(seed).normal(0.0, scale, (len(x), dim))
    rows[:, :k] = (top * (scale * math.sqrt(k) / top.norm(dim=1).mean())).numpy()
    return torch.from_numpy(rows).float()


def public_item_features(name: str, n_items: int, source: str) -> np.ndarray:
    """The public item features of dataset ``name``, in dense item order (dense index = sorted original id)."""
    if name != "ml-100k":
        raise FedrecError(f"{source}: item_features {name!r}: only ml-100k ships item features")
    features = ml100k_item_features(load_dataset("ml-100k").item_ids)
    if len(features) != n_items:
        raise FedrecError(
            f"{source}: feature_init needs all {len(features)} ML-100K items, the catalogue has {n_items} "
            "(set feature_init = false for subsets and other datasets)"
        )
    return features
