"""Membership inference: chance on random scores, clearly above chance on a model that memorizes."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.common.config import CentralConfig
from fedrec.common.model import ModelConfig
from fedrec.common.split import temporal_split
from fedrec.common.training import TrainConfig
from fedrec.simulations.audit.attack_metrics import attack_summary, auc, tpr_at_fpr
from fedrec.simulations.audit.mia import attack_arm, keep_matrix, mia_candidates, train_shadow, train_shadows

MEMORIZE = CentralConfig(
    model=ModelConfig(gmf_dim=16, mlp_dim=16, layers=(32, 16)), train=TrainConfig(batch_size=64, lr=0.02, negatives=4)
)


def test_metrics_on_known_scores():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=4000), rng.normal(size=4000)
    random = attack_summary(a, b)
    assert random["auc"] == pytest.approx(0.5, abs=0.03)
    assert random["tpr@1%fpr"] == pytest.approx(0.01, abs=0.01)
    assert auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert auc(np.array([1.0]), np.array([1.0])) == 0.5  # ties count half
    # 1000 non-members at 0.1% FPR: one non-member may sit above the threshold
    members, non_members = np.arange(10) + 0.5, np.arange(1000) / 100
    assert tpr_at_fpr(members, non_members, 0.001) == 0.0
    assert tpr_at_fpr(np.array([9.985]), non_members, 0.001) == 1.0


def test_candidates_are_members_and_held_out_pairs_of_the_same_users(tiny):
    split = temporal_split(tiny, 0)
    cands = mia_candidates(split, seed=0)
    train = set(zip(split.train_users.tolist(), split.train_items.tolist()))
    pairs = list(zip(cands.users.tolist(), cands.items.tolist()))
    assert all((p in train) == m for p, m in zip(pairs, cands.member))
    assert all(split.test_items[u] == i for (u, i), m in zip(pairs, cands.member) if not m)
    assert sorted(cands.users[cands.member]) == sorted(cands.users[~cands.member])


def test_each_member_is_its_users_latest_train_pair(tiny):
    split = temporal_split(tiny, 0)
    cands = mia_candidates(split, seed=0)
    stamp = {(u, i): t for u, i, t in zip(split.train_users, split.train_items, split.train_timestamps)}
    latest = {u: split.train_timestamps[split.train_users == u].max() for u in np.unique(split.train_users)}
    members = zip(cands.users[cands.member], cands.items[cands.member])
    assert all(stamp[(u, i)] == latest[u] for u, i in members)


def test_keep_matrix_puts_every_candidate_in_half_the_shadows():
    keep = keep_matrix(4, 50, seed=1)
    assert (keep.sum(axis=0) == 2).all()
    with pytest.raises(ValueError):
        keep_matrix(3, 10, seed=0)


def test_random_scores_give_chance(tiny):
    split = temporal_split(tiny, 0)
    cands = mia_candidates(split, seed=0)
    scores = np.random.default_rng(3).normal(size=(split.n_users, split.n_items))
    summary, _ = attack_arm(scores, cands, None)
    assert summary["auc"] == pytest.approx(0.5, abs=0.15)  # 30 + 30 candidates


def test_memorizing_model_is_caught_by_both_attacks(tiny):
    split = temporal_split(tiny, 0)
    cands = mia_candidates(split, seed=0)
    # target: members in its training data, non-members out, trained far past generalisation
    target = train_shadow(split, cands, cands.member, MEMORIZE, epochs=20, seed=7)
    scores = np.full((split.n_users, split.n_items), -10.0)
    scores[cands.users, cands.items] = target
    shadows = train_shadows(split, cands, MEMORIZE, n_shadows=4, epochs=20, seed=11)
    summary, curves = attack_arm(scores, cands, shadows)
    assert summary["attacks"]["loss"]["auc"] > 0.8, summary
    assert summary["attacks"]["lira"]["auc"] > 0.8, summary
    assert set(curves) == {"loss", "lira"}


def test_the_same_model_without_the_members_is_near_chance(tiny):
    """Control: the attack measures membership, not some difference between train and test pairs."""
    split = temporal_split(tiny, 0)
    cands = mia_candidates(split, seed=0)
    target = train_shadow(split, cands, np.zeros(len(cands), bool), MEMORIZE, epochs=20, seed=7)
    scores = np.zeros((split.n_users, split.n_items))
    scores[cands.users, cands.items] = target
    summary, _ = attack_arm(scores, cands, None)
    assert summary["auc"] < 0.75, summary
