"""The white-box canary audit through the device code: silent on the honest mechanisms, loud on broken ones."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fedrec.common.config import FederationConfig, FedrecConfig
from fedrec.common.split import temporal_split
from fedrec.simulations.arms.base import federation_of
from fedrec.simulations.arms.table import ARMS
from fedrec.simulations.audit.whitebox import WhiteboxSettings, along_host_direction, whitebox_audit

SMALL = WhiteboxSettings(users=10, canaries_per_device=40, guesses=100)


def audited(arm: str, epsilon: float, rounds: int) -> FederationConfig:
    federation = federation_of(ARMS[arm], FedrecConfig())
    device = replace(federation.device, participation=1.0)
    if arm == "federated_dp":
        device = replace(device, executor="per_device")  # Opacus, as a deployed device trains
    return replace(
        federation,
        privacy=replace(federation.privacy, epsilon=epsilon),
        server=replace(federation.server, rounds=rounds),
        device=device,
    )


def test_a_hosts_shared_direction_separates_its_included_canaries():
    rng = np.random.default_rng(0)
    hosts = np.repeat(np.arange(4), 50)
    included = rng.random(200) < 0.5
    directions = rng.normal(size=(4, 16))
    rows = rng.normal(size=(200, 16)) + 3.0 * included[:, None] * directions[hosts]
    score = along_host_direction(rows, hosts)
    for h in range(4):
        at = hosts == h
        assert score[at & included].min() > np.median(score[at & ~included])


def test_distributed_is_not_flagged_and_a_device_skipping_its_share_is(tiny, monkeypatch):
    split = temporal_split(tiny, 0)
    federation = audited("federated_ddp", 2.0, 4)
    honest = whitebox_audit(split, federation, SMALL)
    assert honest["epsilon_formal"] == pytest.approx(2.0, abs=0.02)
    assert not honest["flagged"] and honest["epsilon_lower_bound"] <= honest["epsilon_formal"], honest
    from fedrec.client import shared_noise

    monkeypatch.setattr(shared_noise, "noise", lambda shape, std, draws: torch.zeros(shape))
    monkeypatch.setattr(shared_noise, "noisy", lambda sums, stds, draws: dict(sums.sums))  # shares without noise
    broken = whitebox_audit(split, federation, SMALL)
    assert broken["flagged"] and broken["correct"] >= 0.95 * broken["guesses"], broken


def test_local_opacus_is_not_flagged_and_its_noise_turned_down_is(tiny, monkeypatch):
    split = temporal_split(tiny, 0)
    federation = audited("federated_dp", 2.0, 4)
    honest = whitebox_audit(split, federation, SMALL)
    assert not honest["flagged"], honest
    import opacus.optimizers.optimizer as opacus_optimizer
    import opacus.optimizers.optimizer_fast_gradient_clipping as ghost

    from fedrec.client import local_training

    for module in (opacus_optimizer, ghost):
        if hasattr(module, "_generate_noise"):
            original = module._generate_noise
            monkeypatch.setattr(module, "_generate_noise", lambda std, *a, f=original, **k: f(std * 0.01, *a, **k))
    original_empty = local_training._noise_only_step  # a step whose Poisson batch came out empty

    def quieter(optimizer, privacy, generator):
        original_empty(optimizer, replace(privacy, noise_multiplier=privacy.noise_multiplier * 0.01), generator)

    monkeypatch.setattr(local_training, "_noise_only_step", quieter)
    broken = whitebox_audit(split, federation, SMALL)
    assert broken["flagged"], broken
    assert broken["correct"] > honest["correct"] + 30, (honest, broken)
