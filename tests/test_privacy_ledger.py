"""The ledger composes over every round, survives a restart, and the budget is enforced."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.client.local_training import FROZEN_UNDER_DP, make_examples, train_local
from fedrec.client.round_randomness import SimulatedRandomness
from fedrec.common.config import LocalTraining
from fedrec.common.instructions import DevicePrivacy
from fedrec.common.model import NeuMF
from fedrec.common.privacy import PrivacyLedger, noise_for_budget


def test_cumulative_epsilon_exceeds_any_single_round():
    ledger = PrivacyLedger()
    per_round = []
    for _ in range(3):
        ledger.record(1.0, 0.125, 8)
        per_round.append(PrivacyLedger([(1.0, 0.125, 8)]).epsilon(1e-5))
    assert ledger.steps == 24 and ledger.history == [(1.0, 0.125, 24)]
    assert ledger.epsilon(1e-5) > max(per_round) * 1.2


def test_ledger_json_round_trip_and_mixed_history():
    ledger = PrivacyLedger()
    ledger.record(1.0, 0.125, 8)
    ledger.record(2.0, 0.125, 8)
    again = PrivacyLedger.from_json(ledger.to_json())
    assert again.history == [(1.0, 0.125, 8), (2.0, 0.125, 8)]
    assert again.epsilon(1e-5) == pytest.approx(ledger.epsilon(1e-5))
    assert PrivacyLedger.from_json(None).epsilon(1e-5) == 0.0


@pytest.mark.parametrize("target", [1.0, 8.0])
def test_noise_for_budget_lands_at_or_below_target(target):
    sigma = noise_for_budget(target, 1e-5, 0.125, 8 * 20)
    assert PrivacyLedger([(sigma, 0.125, 160)]).epsilon(1e-5) <= target
    assert PrivacyLedger([(sigma * 0.9, 0.125, 160)]).epsilon(1e-5) > target * 0.99


def test_private_training_moves_the_model_and_counts_steps():
    rng = np.random.default_rng(1)
    pos = rng.choice(30, 12, replace=False)
    items, labels = make_examples(pos, pos, 30, 2, rng)
    torch.manual_seed(0)
    model = NeuMF(1, 30)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = train_local(
        model,
        items,
        labels,
        LocalTraining(epochs=2, steps_per_epoch=4, lr=0.05, optimizer="sgd"),
        DevicePrivacy(0.8, budget=1e9),
        SimulatedRandomness(0),
    )
    assert out.steps == 8
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items() if k not in FROZEN_UNDER_DP)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_tiny_device_with_empty_batches_stays_finite(optimizer):
    """Fewer examples than steps: Opacus' expected batch would be 0 and most Poisson batches are empty."""
    rng = np.random.default_rng(0)
    pos = np.array([1, 2])
    items, labels = make_examples(pos, pos, 20, 2, rng)
    for seed in range(4):
        model = NeuMF(1, 20)
        out = train_local(
            model,
            items,
            labels,
            LocalTraining(steps_per_epoch=8, lr=0.05, optimizer=optimizer),
            DevicePrivacy(1.0, budget=1e9),
            SimulatedRandomness(seed),
        )
        assert all(torch.isfinite(p).all() for p in model.parameters())
        assert out.steps == 8  # empty batches are noise-only steps, still counted
