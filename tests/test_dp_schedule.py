"""Record-level DP on the device: negatives that depend on the record alone, noise planned for the
participation schedule actually run, nothing spent on parameters that cannot change a ranking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.client.device_round import refuses
from fedrec.client.fleet import participates
from fedrec.client.local_training import FROZEN_UNDER_DP, make_examples, train_local
from fedrec.client.round_randomness import SimulatedRandomness
from fedrec.common.config import DeviceConfig, LocalTraining, PrivacyConfig
from fedrec.common.instructions import DevicePrivacy, resolve_privacy
from fedrec.common.mechanisms import mechanism_for, planned_rounds
from fedrec.common.model import NeuMF
from fedrec.common.privacy import PrivacyLedger


def test_catalogue_negatives_ignore_everything_but_the_record():
    rng = np.random.default_rng(0)
    positives = np.arange(40)
    items, labels = make_examples(positives, None, 50, 20, np.random.default_rng(1))
    negatives = items[:, 1:].numpy()
    assert set(np.unique(negatives)) == set(range(50))  # positives too: kept as noisy 0 labels
    assert (labels[:, 1:] == 0).all() and (labels[:, 0] == 1).all()
    # each record's group is drawn on its own: the groups of a subset are those of the whole, row for row
    again, _ = make_examples(positives[:10], None, 50, 20, np.random.default_rng(1))
    assert torch.equal(again, items[:10])
    avoided, _ = make_examples(positives, positives, 50, 20, rng)
    assert not np.isin(avoided[:, 1:].numpy(), positives).any()


@pytest.mark.parametrize("participation", [0.25, 0.5])
def test_the_median_device_ends_near_its_budget(participation):
    """Noise for the median schedule: the median device spends >= 90% of epsilon, none goes past it."""
    rounds, epsilon = 30, 8.0
    device = DeviceConfig(participation=participation, training=LocalTraining(steps_per_epoch=8))
    privacy = resolve_privacy(PrivacyConfig(epsilon=epsilon, calibration_quantile=0.5), device, rounds)
    finals = []
    for d in range(200):
        ledger = PrivacyLedger()
        for rnd in range(1, rounds + 1):
            if not participates(f"device-{d:05d}", rnd, participation, 0):
                continue
            _, after = mechanism_for(privacy).ledgers(ledger, device, privacy, rnd)
            if not refuses(after, privacy):
                ledger = after
        finals.append(ledger.epsilon(privacy.delta))
    assert max(finals) <= epsilon
    assert np.median(finals) >= 0.9 * epsilon


def test_every_round_plan_is_the_old_worst_case():
    device = DeviceConfig(participation=0.25)
    assert planned_rounds(30, 0.25, 1.0) == 30 and planned_rounds(30, 1.0, 0.5) == 30
    assert planned_rounds(30, 0.25, 0.5) == 7
    loose = resolve_privacy(PrivacyConfig(calibration_quantile=0.5), device, 30)
    worst = resolve_privacy(PrivacyConfig(calibration_quantile=1.0), device, 30)
    assert loose.noise_multiplier < worst.noise_multiplier


def test_output_bias_is_not_trained_under_dp():
    rng = np.random.default_rng(0)
    positives = rng.choice(30, 12, replace=False)
    items, labels = make_examples(positives, None, 30, 2, rng)
    model = NeuMF(1, 30)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_local(
        model,
        items,
        labels,
        LocalTraining(steps_per_epoch=2, lr=0.05, optimizer="sgd"),
        DevicePrivacy(1.0, budget=1e9),
        SimulatedRandomness(0),
    )
    after = model.state_dict()
    for name in FROZEN_UNDER_DP:
        assert torch.equal(before[name], after[name])
    assert not torch.equal(before["item_emb.weight"], after["item_emb.weight"])
