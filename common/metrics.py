"""Accuracy metrics of docs/protocol.md: full-ranking and sampled-99 HR@K / NDCG@K, vectorized.

Every arm hands over a dense score matrix [n_users, n_items]; the same code ranks them all.
Ties are broken uniformly at random (seeded): a constant scorer must not look good by luck of order.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from fedrec.common.sampling import positive_keys, sample_negatives
from fedrec.common.split import Split

BATCH = 1024
K = 10
ACC_KEYS = (f"hr@{K}", f"ndcg@{K}", f"hr@{K}_sampled", f"ndcg@{K}_sampled")  # every arm, every dataset
# A held-out item rated at least this is one the user liked (the retention simulator's like model uses the
# same line). With ratings, the report also says how often an arm ranks a *liked* held-out item: the item
# counts only when liked, over every user with a held-out item; liked_share is the share of those users.
LIKED_RATING = 4.0
LIKED_KEYS = (f"liked_hr@{K}", f"liked_ndcg@{K}", "liked_share")


def _masked(scores: np.ndarray, seen: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
    """Copy of ``scores`` for ``rows`` with seen items set to -inf."""
    block = np.array(scores[rows], dtype=np.float64, copy=True)
    sub = seen[rows]
    r, c = sub.nonzero()
    block[r, c] = -np.inf
    return block


def ranks_from_scores(
    block: np.ndarray, target_scores: np.ndarray, rng: np.random.Generator, exclude_self: bool = True
) -> np.ndarray:
    """0-based rank of each row's target among the row's candidates, ties split uniformly at random."""
    t = target_scores[:, None]
    greater = (block > t).sum(axis=1)
    equal = (block == t).sum(axis=1) - (1 if exclude_self else 0)
    return greater + rng.integers(0, np.maximum(equal, 0) + 1)


def full_ranks(scores: np.ndarray, split: Split, stage: str = "test", seed: int = 0) -> np.ndarray:
    """Rank of each user's held-out item among all items the user has not seen (-1 for users without one)."""
    targets = split.targets(stage)
    seen = split.seen_matrix(stage)
    rng = np.random.default_rng(seed)
    users = np.flatnonzero(targets >= 0)
    ranks = np.full(split.n_users, -1, dtype=np.int64)
    for start in range(0, len(users), BATCH):
        rows = users[start : start + BATCH]
        tgt = targets[rows]
        target_scores = np.asarray(scores[rows, tgt], dtype=np.float64)
        block = _masked(scores, seen, rows)
        block[np.arange(len(rows)), tgt] = target_scores  # a repeated item is still rankable
        ranks[rows] = ranks_from_scores(block, target_scores, rng)
    return ranks


def sampled_candidates(split: Split, stage: str, n_negatives: int, seed: int) -> np.ndarray:
    """[n_users, n_negatives] items each user never interacted with (train, validation or test), seeded."""
    users_all = [split.train_users]
    items_all = [split.train_items]
    for held in (split.val_items, split.test_items):
        has = np.flatnonzero(held >= 0)
        users_all.append(has)
        items_all.append(held[has])
    keys = positive_keys(np.concatenate(users_all), np.concatenate(items_all), split.n_items)
    rng = np.random.default_rng(seed)
    rep = np.repeat(np.arange(split.n_users), n_negatives)
    return sample_negatives(rep, keys, split.n_items, rng).reshape(split.n_users, n_negatives)


def sampled_ranks(
    scores: np.ndarray, split: Split, stage: str = "test", seed: int = 0, n_negatives: int = 99
) -> np.ndarray:
    """Rank of the held-out item against ``n_negatives`` uniformly drawn non-interacted items."""
    targets = split.targets(stage)
    users = np.flatnonzero(targets >= 0)
    negatives = sampled_candidates(split, stage, n_negatives, seed)[users]
    target_scores = np.asarray(scores[users, targets[users]], dtype=np.float64)
    neg_scores = np.asarray(np.take_along_axis(scores[users], negatives, axis=1), dtype=np.float64)
    ranks = np.full(split.n_users, -1, dtype=np.int64)
    ranks[users] = ranks_from_scores(neg_scores, target_scores, np.random.default_rng(seed + 1), exclude_self=False)
    return ranks


def hit_ndcg(ranks: np.ndarray, k: int = 10) -> tuple[float, float]:
    """HR@k and NDCG@k over users with a target (rank >= 0)."""
    r = ranks[ranks >= 0]
    if len(r) == 0:
        return 0.0, 0.0
    hit = r < k
    ndcg = np.where(hit, 1.0 / np.log2(r + 2.0), 0.0)
    return float(hit.mean()), float(ndcg.mean())


def liked_hit_ndcg(ranks: np.ndarray, ratings: np.ndarray, k: int = K) -> tuple[float, float, float]:
    """HR@k and NDCG@k where a held-out item counts only when rated >= LIKED_RATING, over users with a
    target, and the share of those users whose held-out item is liked."""
    has = ranks >= 0
    if not has.any():
        return 0.0, 0.0, 0.0
    r, liked = ranks[has], ratings[has] >= LIKED_RATING  # NaN (unrated) is not liked
    hit = (r < k) & liked
    return float(hit.mean()), float(np.where(hit, 1.0 / np.log2(r + 2.0), 0.0).mean()), float(liked.mean())


def evaluate_scores(scores: np.ndarray, split: Split, stage: str = "test", seed: int = 0, k: int = K) -> dict:
    """The accuracy numbers of the report contract: ACC_KEYS, and LIKED_KEYS when the held-out items are rated."""
    ranks = full_ranks(scores, split, stage, seed)
    hr, ndcg = hit_ndcg(ranks, k)
    hr_s, ndcg_s = hit_ndcg(sampled_ranks(scores, split, stage, seed), k)
    found = {f"hr@{k}": hr, f"ndcg@{k}": ndcg, f"hr@{k}_sampled": hr_s, f"ndcg@{k}_sampled": ndcg_s}
    ratings = split.target_ratings(stage)
    if np.isfinite(ratings[split.targets(stage) >= 0]).any():
        liked_hr, liked_ndcg, share = liked_hit_ndcg(ranks, ratings, k)
        found.update({f"liked_hr@{k}": liked_hr, f"liked_ndcg@{k}": liked_ndcg, "liked_share": share})
    return found


def top_k(scores: np.ndarray, seen: sp.csr_matrix, k: int) -> np.ndarray:
    """[n_users, k] best unseen items per user, best first."""
    out = np.empty((scores.shape[0], k), dtype=np.int64)
    for start in range(0, scores.shape[0], BATCH):
        rows = np.arange(start, min(start + BATCH, scores.shape[0]))
        block = _masked(scores, seen, rows)
        part = np.argpartition(-block, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(block, part, axis=1), axis=1, kind="stable")
        out[rows] = np.take_along_axis(part, order, axis=1)
    return out
