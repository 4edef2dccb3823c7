"""ItemKNN (Sarwar et al. 2001; RecBole's ItemKNN): a user's score for an item sums the cosine similarities,
shrunk, of that item to the items the user has, over each item's k nearest neighbours. k and the shrink
are chosen by validation NDCG@10 (the test item is never looked at)."""

from __future__ import annotations

import numpy as np

from fedrec.common.metrics import full_ranks, hit_ndcg
from fedrec.common.split import Split
from fedrec.simulations.arms.base import ArmBinding, ArmResult, Fitter

NEIGHBOURS = (20, 50, 100, 200, 400)
SHRINKS = (0.0, 10.0, 100.0)


def cosine(overlap: np.ndarray, shrink: float) -> np.ndarray:
    """Item x item cosine from the co-occurrence counts ``overlap`` (x.T @ x of the binary train matrix),
    ``shrink`` added to the denominator, no self-similarity."""
    norms = np.sqrt(np.diag(overlap))
    sim = overlap / (np.outer(norms, norms) + shrink + 1e-12)
    np.fill_diagonal(sim, 0.0)
    return sim


def keep_nearest(sim: np.ndarray, k: int) -> np.ndarray:
    """Each item (column) keeps the ``k`` items most similar to it; the rest are zero."""
    if k >= sim.shape[0]:
        return sim
    cut = np.argpartition(-sim, k, axis=0)[k:]
    kept = sim.copy()
    np.put_along_axis(kept, cut, 0.0, axis=0)
    return kept


def fit_itemknn(
    split: Split, seed: int, neighbours: tuple[int, ...] = NEIGHBOURS, shrinks: tuple[float, ...] = SHRINKS
) -> ArmResult:
    x = split.train_matrix().toarray().astype(np.float32)
    curve: dict[str, float] = {}
    best: tuple[float, dict, np.ndarray | None] = (-1.0, {}, None)
    overlap = x.T @ x
    for shrink in shrinks:
        sim = cosine(overlap, shrink)
        for k in neighbours:
            scores = (x @ keep_nearest(sim, k)).astype(np.float32)
            _, ndcg = hit_ndcg(full_ranks(scores, split, "validation", seed))
            curve[f"k={k},shrink={shrink:g}"] = ndcg
            if ndcg > best[0]:
                best = (ndcg, {"k": k, "shrink": shrink}, scores)
    assert best[2] is not None
    return ArmResult("itemknn", best[2], {**best[1], "validation_ndcg@10_by_setting": curve})


def bind_itemknn(binding: ArmBinding) -> Fitter:
    return fit_itemknn
