"""Is each oracle any good? Refit it on 90% of the interactions and test on the held-out 10%.

MF: held-out RMSE against a bias-only model, calibration by decile of the prediction (mean predicted
vs mean observed rating), and how often "predicted >= 4" is right. EASE: where held-out interactions
land among the user's unseen items by score decile (a useful oracle puts most in the top deciles; a
useless one puts 10% in each), and the share in the top decile, which is its relevance rule.
"""

from __future__ import annotations

import numpy as np

from fedrec.common.datasets import Interactions
from fedrec.simulations.retention.mf import MFConfig, fit_biased_mf
from fedrec.simulations.retention.oracles import EASE_ORACLE_LAMBDA, RELEVANT_RATING, TOP_SHARE, ease_scores

HOLDOUT_SHARE = 0.1


def holdout_mask(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(n) < HOLDOUT_SHARE


def _rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - truth) ** 2)))


def mf_checks(data: Interactions, config: MFConfig, seed: int) -> dict:
    test = holdout_mask(len(data), seed)
    tr = ~test
    fit = fit_biased_mf(data.users[tr], data.items[tr], data.ratings[tr], data.n_users, data.n_items, config)
    bias = fit_biased_mf(data.users[tr], data.items[tr], data.ratings[tr], data.n_users, data.n_items,
                         MFConfig(dim=0, reg=config.reg, iters=2, seed=seed))
    truth = data.ratings[test].astype(np.float64)
    pred = np.clip(fit.predict(data.users[test], data.items[test]), 1.0, 5.0)
    edges = np.quantile(pred, np.linspace(0, 1, 11)[1:-1])
    decile = np.searchsorted(edges, pred, side="right")
    says = pred >= RELEVANT_RATING
    return {
        "heldout_interactions": int(test.sum()),
        "rmse": _rmse(pred, truth),
        "rmse_bias_only": _rmse(np.clip(bias.predict(data.users[test], data.items[test]), 1.0, 5.0), truth),
        "mae": float(np.mean(np.abs(pred - truth))),
        "by_decile": [
            {"decile": d + 1, "predicted": float(pred[decile == d].mean()), "observed": float(truth[decile == d].mean()),
             "n": int((decile == d).sum())}
            for d in range(10) if (decile == d).any()
        ],
        "relevant_precision": float(np.mean(truth[says] >= RELEVANT_RATING)) if says.any() else float("nan"),
        "relevant_base_rate": float(np.mean(truth >= RELEVANT_RATING)),
    }


def ease_checks(data: Interactions, seed: int, lam: float = EASE_ORACLE_LAMBDA) -> dict:
    test = holdout_mask(len(data), seed)
    seen = np.zeros((data.n_users, data.n_items), dtype=bool)
    seen[data.users[~test], data.items[~test]] = True
    pairs = np.unique(np.stack([data.users[test], data.items[test]], axis=1), axis=0)
    pairs = pairs[~seen[pairs[:, 0], pairs[:, 1]]]  # a re-interaction with a train item is not a new find
    scores = np.where(seen, -np.inf, ease_scores(data.users[~test], data.items[~test], data.n_users, data.n_items, lam))
    target = scores[pairs[:, 0], pairs[:, 1]]
    above = np.zeros(len(pairs), dtype=np.int64)
    for start in range(0, len(pairs), 2048):
        sl = slice(start, start + 2048)
        above[sl] = (scores[pairs[sl, 0]] > target[sl, None]).sum(axis=1)
    n_open = (~seen).sum(axis=1)[pairs[:, 0]]
    percentile = 1.0 - above / n_open  # 1 = the oracle's favourite unseen item
    decile = np.minimum((percentile * 10).astype(np.int64), 9)
    top = above < np.maximum(np.ceil(TOP_SHARE * n_open), 1)
    return {
        "heldout_interactions": int(len(pairs)),
        "heldout_in_top_decile": float(top.mean()),
        "heldout_in_top_decile_if_random": TOP_SHARE,
        "mean_percentile": float(percentile.mean()),
        "by_decile": [{"decile": d + 1, "share_of_heldout": float(np.mean(decile == d))} for d in range(10)],
    }
