"""The canary audit: canaries go where planned, guesses are fixed in advance, and the audit is not blind."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedrec.common.config import DeviceConfig, FederationConfig, LocalTraining, PrivacyConfig, ServerConfig
from fedrec.common.model import ModelConfig
from fedrec.common.split import temporal_split
from fedrec.simulations.arms.base import ArmResult
from fedrec.simulations.audit.bound import ceiling
from fedrec.simulations.audit.canary import canary_audit, evaluate_guesses, guesses, plan_canaries, with_canaries
from fedrec.simulations.audit.inprocess import fit_inprocess


def test_included_canaries_and_only_those_are_trained_on(tiny):
    split = temporal_split(tiny, 0)
    plan = plan_canaries(split, m=20, seed=0)
    data, c_split = with_canaries(tiny, split, plan)
    assert c_split.n_items == data.n_items == split.n_items + 20
    train = set(zip(c_split.train_users.tolist(), c_split.train_items.tolist()))
    for u, i, inc in zip(plan.users, plan.items, plan.included):
        assert ((u, i) in train) == inc
    assert len(c_split.train_users) == len(split.train_users) + plan.included.sum()
    assert (np.diff(c_split.train_users) >= 0).all()  # still grouped by user (provisioning needs it)
    assert np.array_equal(c_split.test_items, split.test_items)  # no canary became a held-out item
    assert 0 < plan.included.sum() < 20


def test_guesses_are_the_k_highest_and_lowest():
    g = guesses(np.array([0.1, 5.0, -3.0, 0.2, 4.0, -1.0]), k=2)
    assert g.tolist() == [0, 1, -1, 0, 1, -1]
    with pytest.raises(ValueError):
        guesses(np.zeros(3), k=2)


def test_perfect_scores_reach_the_ceiling(tiny):
    plan = plan_canaries(temporal_split(tiny, 0), m=100, seed=1)
    perfect = evaluate_guesses(plan, plan.included.astype(float), k=20, delta=1e-5, confidence=0.95)
    assert perfect["correct"] == perfect["guesses"] == 40
    assert perfect["epsilon_lower_bound"] == pytest.approx(ceiling(100, 40, 1e-5)) and perfect["ceiling"] > 2
    noise = np.random.default_rng(0).normal(size=100)
    assert evaluate_guesses(plan, noise, k=20, delta=1e-5, confidence=0.95)["epsilon_lower_bound"] < 0.5


def test_audit_trains_once_on_the_canary_split(tiny):
    calls = []

    def oracle(data, split, seed):  # a "model" that knows exactly which canaries it saw
        calls.append(split.n_items)
        scores = np.zeros((split.n_users, split.n_items))
        scores[split.train_users, split.train_items] = 1.0
        return ArmResult("oracle", scores, {"privacy": {"epsilon_max": 9.0}})

    out = canary_audit(tiny, temporal_split(tiny, 0), oracle, m=60, k=15, seed=0, delta=1e-5)
    assert calls == [tiny.n_items + 60]
    assert out["correct"] == out["guesses"] == 30 and out["epsilon_formal"] == 9.0


# Few devices, aggressive local training: a configuration in which the non-private arm memorizes.
LEAKY = FederationConfig(
    server=ServerConfig(rounds=5),
    privacy=PrivacyConfig(epsilon=1.0),
    device=DeviceConfig(
        model=ModelConfig(kind="gmf", gmf_dim=8),
        participation=1.0,
        training=LocalTraining(epochs=4, steps_per_epoch=2, lr=3.0, optimizer="sgd", negatives=1),
    ),
)


def test_the_audit_sees_a_leak_without_dp_and_stays_below_epsilon_with_it(tiny):
    data = tiny.subset_users(8)
    split = temporal_split(data, 0)
    results = {}
    for private in (False, True):
        cfg = replace(LEAKY, privacy=replace(LEAKY.privacy, mechanism="local" if private else "none"))
        train = lambda d, s, seed, cfg=cfg: fit_inprocess(d, s, seed, cfg)  # noqa: E731
        results[private] = canary_audit(data, split, train, m=64, k=16, seed=0, delta=1e-5)
    no_dp, dp = results[False], results[True]
    assert no_dp["epsilon_lower_bound"] > 0.8, no_dp
    assert no_dp["epsilon_lower_bound"] > dp["epsilon_lower_bound"] + 0.5, (no_dp, dp)
    assert dp["epsilon_formal"] == pytest.approx(1.0, abs=0.01)
    assert dp["epsilon_lower_bound"] <= dp["epsilon_formal"]
    assert no_dp["ceiling"] == dp["ceiling"] == pytest.approx(ceiling(64, 32, 1e-5))
