"""What each visit serves and how satisfying it is, precomputed per arm.

An arm's scores do not change during the simulation and served items become seen, so the n-th visit
of a user always gets the n-th block of K items of that user's ranking of not-yet-interacted items.
Ranking once and reading satisfaction per block turns the simulation into pure array lookups.
"""

from __future__ import annotations

import numpy as np

K = 10


def ranked_unseen(scores: np.ndarray, seen: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's ``length`` best not-seen items by score, best first, and whether each slot holds one."""
    length = min(length, scores.shape[1])
    masked = np.where(seen, -np.inf, np.asarray(scores, dtype=np.float32))
    top = np.argpartition(-masked, length - 1, axis=1)[:, :length]
    order = np.argsort(-np.take_along_axis(masked, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    return top, np.isfinite(np.take_along_axis(masked, top, axis=1))


def slate_satisfaction(
    scores: np.ndarray, seen: np.ndarray, values: list[np.ndarray], n_slates: int, k: int = K
) -> np.ndarray:
    """[len(values), n_users, n_slates]: each value matrix summed over each served slate.

    With value = P(pick) P(like) that is the slate's expected number of liked picks. A slate the
    catalogue can no longer fill sums only the items it holds; an empty one scores 0.
    """
    items, valid = ranked_unseen(scores, seen, k * n_slates)
    n_users, length = items.shape
    pad = k * n_slates - length
    out = np.empty((len(values), n_users, n_slates), dtype=np.float32)
    rows = np.arange(n_users)[:, None]
    for j, value in enumerate(values):
        held = np.where(valid, value[rows, items], 0.0)
        out[j] = np.pad(held, ((0, 0), (0, pad))).reshape(n_users, n_slates, k).sum(axis=2)
    return out
