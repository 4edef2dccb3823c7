"""One-run canary audit (Steinke, Nasr and Jagielski 2023), with canaries shaped for record-level DP.

The unit of privacy is one interaction, so a canary is one interaction: (host user, canary item), where
every canary has its own fresh item that nothing else touches (the strongest canary a recommender
offers: if included, only its own gradient ever pulls that item up). Each of the m canaries is included
in its host's training data independently with probability 1/2, the arm is trained once, and the
auditor scores every canary by the trained model's logit for (host, item). It guesses "included" for the
``k`` highest scores and "excluded" for the ``k`` lowest, abstaining on the rest (k fixed in advance),
and ``simulations.audit.bound`` turns the number of correct guesses into an epsilon lower bound.

Many canaries share a host device: the guarantee under test is per interaction, which is exactly what
the theorem needs (it changes one canary at a time), so no group-privacy factor enters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedrec.common.datasets import Interactions
from fedrec.common.split import Split
from fedrec.simulations.arms.base import ArmResult
from fedrec.simulations.audit.bound import ceiling, epsilon_lower_bound

CANARY_ITEM_ID_BASE = "canary-"  # original ids of the fresh canary items (never clash with dataset ids)

CanaryTrainer = Callable[[Interactions, Split, int], ArmResult]  # returns scores over every item, info["privacy"]


@dataclass(frozen=True)
class CanaryPlan:
    users: np.ndarray  # [m] host user (dense index)
    items: np.ndarray  # [m] fresh canary item (dense index >= n_base_items)
    included: np.ndarray  # [m] bool, each True with probability 1/2
    n_base_items: int

    @property
    def m(self) -> int:
        return len(self.users)


def plan_canaries(split: Split, m: int, seed: int) -> CanaryPlan:
    """m canaries on random hosts among users with train data; inclusion bits are fair coins."""
    rng = np.random.default_rng(seed)
    hosts = np.unique(split.train_users)
    return CanaryPlan(
        users=np.sort(rng.choice(hosts, size=m, replace=True)),
        items=split.n_items + np.arange(m),
        included=rng.random(m) < 0.5,
        n_base_items=split.n_items,
    )


def with_canaries(data: Interactions, split: Split, plan: CanaryPlan) -> tuple[Interactions, Split]:
    """The data with m fresh items, and the split with the included canaries added to train.

    Canary timestamps are the host's first train timestamp, so no canary becomes a validation or test
    item; train arrays stay grouped by user (device provisioning relies on it)."""
    inc = plan.included
    first_ts = np.full(split.n_users, 0, dtype=np.int64)
    order = np.argsort(split.train_users, kind="stable")
    users_sorted = split.train_users[order]
    starts = np.searchsorted(users_sorted, np.arange(split.n_users))
    has = np.bincount(split.train_users, minlength=split.n_users) > 0
    first_ts[has] = split.train_timestamps[order][starts[has]]
    users = np.concatenate([split.train_users, plan.users[inc]])
    items = np.concatenate([split.train_items, plan.items[inc]])
    stamps = np.concatenate([split.train_timestamps, first_ts[plan.users[inc]]])
    regroup = np.argsort(users, kind="stable")
    n_items = split.n_items + plan.m
    new_split = dataclasses.replace(
        split, n_items=n_items, train_users=users[regroup], train_items=items[regroup], train_timestamps=stamps[regroup]
    )
    canary_ids = np.array([f"{CANARY_ITEM_ID_BASE}{j}" for j in range(plan.m)], dtype=object)
    new_data = dataclasses.replace(
        data,
        users=np.concatenate([data.users, plan.users[inc]]),
        items=np.concatenate([data.items, plan.items[inc]]),
        timestamps=np.concatenate([data.timestamps, first_ts[plan.users[inc]]]),
        ratings=np.concatenate([data.ratings, np.full(inc.sum(), np.nan, dtype=data.ratings.dtype)]),
        item_ids=np.concatenate([data.item_ids.astype(object), canary_ids]),
    )
    return new_data, new_split


def guesses(scores: np.ndarray, k: int) -> np.ndarray:
    """+1 (included) for the k highest scores, -1 for the k lowest, 0 (abstain) for the rest."""
    if 2 * k > len(scores):
        raise ValueError(f"{2 * k} guesses need at least as many canaries, got {len(scores)}")
    order = np.argsort(scores, kind="stable")
    out = np.zeros(len(scores), dtype=np.int8)
    out[order[len(scores) - k :]] = 1
    out[order[:k]] = -1
    return out


def score_canaries(result: ArmResult, plan: CanaryPlan) -> np.ndarray:
    return np.asarray(result.scores, dtype=np.float64)[plan.users, plan.items]


def evaluate_guesses(plan: CanaryPlan, scores: np.ndarray, k: int, delta: float, confidence: float) -> dict:
    g = guesses(scores, k)
    truth = np.where(plan.included, 1, -1)
    r = int(np.count_nonzero(g))
    v = int(np.sum(g == truth))
    return {
        "epsilon_lower_bound": epsilon_lower_bound(plan.m, r, v, delta, confidence),
        "confidence": confidence,
        "delta": delta,
        "m": plan.m,
        "included": int(plan.included.sum()),
        "guesses": r,
        "correct": v,
        "ceiling": ceiling(plan.m, r, delta, confidence),
    }


def canary_audit(
    data: Interactions,
    split: Split,
    train: CanaryTrainer,
    m: int,
    k: int,
    seed: int,
    delta: float,
    confidence: float = 0.95,
) -> dict:
    """Plan, insert, train once, score, guess, bound; plus the formal epsilon of that very training."""
    plan = plan_canaries(split, m, seed)
    c_data, c_split = with_canaries(data, split, plan)
    result = train(c_data, c_split, seed)
    out = evaluate_guesses(plan, score_canaries(result, plan), k, delta, confidence)
    privacy = result.info.get("privacy") or {}
    out["epsilon_formal"] = privacy.get("epsilon_max")
    out["n_users"], out["n_items"] = int(split.n_users), int(c_split.n_items)
    out["train_interactions"] = int(len(c_split.train_users))
    return out
