"""Which rounds the server asks its devices to evaluate."""

from __future__ import annotations

from dataclasses import replace

import pytest
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg

from fedrec.common.config import DeviceConfig, PrivacyConfig, StrategyConfig
from fedrec.common.instructions import DeviceInstructions, resolve_privacy
from fedrec.server.strategies import build_strategy


class TwoNodes:
    """Grid stand-in: the strategy only asks which nodes are connected."""

    def get_node_ids(self):
        return [1, 2]


@pytest.fixture(autouse=True)
def messages_without_a_run(monkeypatch):
    """Flower builds a Message only inside a run; a node id per message tells the same here."""
    monkeypatch.setattr(FedAvg, "_construct_messages", lambda self, record, node_ids, kind: list(node_ids))


def evaluated_rounds(mechanism: str, rounds: int = 6, eval_every: int = 2) -> list[int]:
    device = DeviceConfig()
    privacy = resolve_privacy(replace(PrivacyConfig(), mechanism=mechanism), device, rounds, 1000, 100)
    strategy = build_strategy(
        StrategyConfig(),
        device.training.lr,
        DeviceInstructions(device, privacy),
        round_offset=0,
        last_round=rounds,
        eval_every=eval_every,
        wire_log=None,
    )
    return [
        r
        for r in range(1, rounds + 1)
        if list(strategy.configure_evaluate(r, ArrayRecord(), ConfigRecord(), TwoNodes()))  # type: ignore[arg-type]
    ]


def test_plain_arm_evaluates_every_eval_every_rounds_and_after_the_last():
    assert evaluated_rounds("none") == [2, 4, 6]
    assert evaluated_rounds("none", rounds=5) == [2, 4, 5]


@pytest.mark.parametrize("mechanism", ["local", "user"])
def test_private_arm_evaluates_after_the_last_round_only(mechanism):
    """A private evaluation reply carries a device count only, so a mid-run one would buy nothing."""
    assert evaluated_rounds(mechanism) == [6]
