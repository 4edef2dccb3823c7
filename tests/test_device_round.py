"""The one device round: every mechanism and executor checks the budget once, commits a round's state in one
transaction, and a refusing device keeps its ledger, its rows and its round counter."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.client.device_round import EMBEDDING, LEDGER, ROUNDS, device_rounds, read_ledger
from fedrec.client.fleet import local_step
from fedrec.common.config import DeviceConfig, LocalTraining
from fedrec.common.instructions import DeviceInstructions, DevicePrivacy, RoundInfo
from fedrec.common.mechanisms import mechanism_for
from fedrec.common.model import ModelConfig
from fedrec.common.policy import SIMULATED
from fedrec.common.privacy import PrivacyLedger
from fedrec.common.store import Events
from fedrec.simulations.audit.inprocess import MemoryDevice

N_ITEMS = 50
MODEL = ModelConfig(gmf_dim=8, mlp_dim=8, layers=(16, 8))


def device_of(name: str, n: int, seed: int) -> MemoryDevice:
    items = np.random.default_rng(seed).choice(N_ITEMS, n, replace=False).astype(np.int64)
    events = Events(items, np.arange(n, dtype=np.int64), np.full(n, "rating"), np.full(n, np.nan, np.float32))
    return MemoryDevice(name, events)


@pytest.mark.parametrize("executor", ["per_device", "batched"])
def test_a_device_runs_until_its_budget_and_then_keeps_everything(executor):
    training = LocalTraining(steps_per_epoch=4, lr=0.05, optimizer="sgd")
    device = DeviceConfig(n_items=N_ITEMS, model=MODEL, training=training, executor=executor, seed=3)
    budget = PrivacyLedger([(1.0, 0.25, 12)]).epsilon(1e-5) + 1e-9  # exactly three rounds of 4 steps fit
    privacy = DevicePrivacy(1.0, budget=budget)
    devices = [device_of("a", 20, 0), device_of("b", 9, 1)]
    params = mechanism_for(privacy).initial_state(device)
    outcomes, kept = [], []
    for rnd in range(1, 7):
        task = DeviceInstructions(device, privacy, RoundInfo(rnd))
        results = list(device_rounds(devices, task, local_step(params, task), SIMULATED))
        outcomes.append([r.outcome for r in results])
        kept.append(dict(devices[0].states))
    assert [[o.refused for o in round_] for round_ in outcomes] == [[False, False]] * 3 + [[True, True]] * 3
    for d in devices:
        ledger = read_ledger(d, device.state_prefix)
        assert ledger.history == [(1.0, 0.25, 12)] and ledger.epsilon(1e-5) <= budget
        assert d.states[device.state_prefix + ROUNDS] == b"3"
    assert kept[2] == kept[5]  # the refused rounds wrote nothing: rows, ledger, counter unchanged
    assert kept[0][device.state_prefix + EMBEDDING] != kept[1][device.state_prefix + EMBEDDING]
    assert kept[0][device.state_prefix + LEDGER] != kept[1][device.state_prefix + LEDGER]
    assert outcomes[-1][0].epsilon == pytest.approx(ledger.epsilon(1e-5))


@pytest.mark.parametrize("mechanism", ["local", "user"])
def test_a_refused_round_contributes_nothing(mechanism):
    device = DeviceConfig(n_items=N_ITEMS, model=MODEL, executor="per_device", participation=1.0)
    privacy = DevicePrivacy(1.0, budget=1e-3, mechanism=mechanism, expected_batch=1.0)  # one round costs more
    params = mechanism_for(privacy).initial_state(device)
    task = DeviceInstructions(device, privacy, RoundInfo(1))
    one = device_of("a", 12, 0)
    [result] = device_rounds([one], task, local_step(params, task), SIMULATED)
    assert result.outcome.refused and result.num_examples == 0 and result.arrays == {}
    assert one.states == {}
