"""A cheap federated trainer for canary audits: the devices' own round, no Flower, no files.

Each round runs ``fedrec.client.fleet.train_fleet`` over every device as one node would: the same
participation coins, examples, seeds, budget check, executor (Opacus per device, or stacked) and
weighting (``fedrec.common.replies.device_weight``) as the harness's devices, the device round of
``fedrec.client.device_round`` included. Only where the state lives differs: each device's events and
state are held in memory instead of an encrypted SQLite store, and the server is the one node's mean.
The noise is resolved from the audited arm's settings exactly as the server resolves it. What it leaves
out (message passing, encryption at rest) does not change what the DP analysis covers, so it audits the
same mechanism at a fraction of the cost; ``fedrec audit`` uses the real harness by default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from fedrec.client.device_round import read_ledger, training_row
from fedrec.client.fleet import train_fleet
from fedrec.common.config import FederationConfig
from fedrec.common.datasets import Interactions
from fedrec.common.errors import FedrecError
from fedrec.common.instructions import DeviceInstructions, RoundInfo, resolve_privacy
from fedrec.common.mechanisms import Trainer, mechanism_for
from fedrec.common.model import build_model
from fedrec.common.policy import SIMULATED
from fedrec.common.split import Split
from fedrec.common.store import Events
from fedrec.simulations.arms.base import ArmResult


@dataclass
class MemoryDevice:
    """One simulated device whose train events and state live in memory (``DeviceState`` and ``Device``)."""

    device_id: str
    events: Events
    states: dict[str, bytes] = field(default_factory=dict)
    seeded: bool = True  # a simulated device: its randomness repeats from the run's seed

    @property
    def path(self) -> Path:
        return Path(f"<memory>/{self.device_id}")

    def open(self) -> MemoryDevice:
        return self

    def read_events(self, split: str | None = "train") -> Events:
        if split != "train":
            raise FedrecError(f"{self.path}: the in-process audit holds train events only, not {split!r}")
        return self.events

    def get_state(self, name: str) -> bytes | None:
        return self.states.get(name)

    def put_states(self, values: Mapping[str, bytes]) -> None:
        self.states.update(values)

    def __enter__(self) -> MemoryDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def memory_devices(split: Split) -> list[MemoryDevice]:
    """Per user, its train events in time order (the held-out ones never shape training)."""
    order = np.lexsort((split.train_timestamps, split.train_users))
    bounds = np.concatenate([[0], np.cumsum(np.bincount(split.train_users, minlength=split.n_users))])
    items, stamps = split.train_items[order], split.train_timestamps[order]
    devices = []
    for u in range(split.n_users):
        part = slice(bounds[u], bounds[u + 1])
        n = bounds[u + 1] - bounds[u]
        events = Events(
            items[part].astype(np.int64),
            stamps[part].astype(np.int64),
            np.full(n, "rating"),
            np.full(n, np.nan, dtype=np.float32),
        )
        devices.append(MemoryDevice(str(u), events))
    return devices


def fit_inprocess(data: Interactions, split: Split, seed: int, federation: FederationConfig) -> ArmResult:
    device = replace(federation.device, n_items=split.n_items, seed=seed)
    rounds = federation.server.rounds
    privacy = resolve_privacy(federation.privacy, device, rounds)
    mechanism = mechanism_for(privacy)
    if mechanism.trainer is not Trainer.LOCAL:
        raise FedrecError(f"the in-process audit trains the local mechanisms only, not {mechanism.name!r}")
    global_params = mechanism.initial_state(device)
    everyone = memory_devices(split)
    devices = [d for d in everyone if len(d.events.items)]
    for rnd in range(1, rounds + 1):
        task = DeviceInstructions(device, privacy, RoundInfo(rnd))
        mean, _ = train_fleet(devices, global_params, task, SIMULATED)
        global_params = {k: mean[k] for k in global_params}  # one node: its mean is the aggregate
    user_rows = torch.cat([training_row(d, d.device_id, device) for d in everyone])
    model = build_model(split.n_users, split.n_items, device.model)
    model.load_state_dict({**global_params, "user_emb.weight": user_rows})
    scores = model.score_users(torch.arange(split.n_users)).numpy()
    info: dict = {
        "trainer": "in-process FedAvg over fedrec.client.fleet.train_fleet (state in memory)",
        "rounds": rounds,
        "noise_multiplier": privacy.noise_multiplier,
    }
    if privacy.private:
        ledgers = [read_ledger(d, device.state_prefix) for d in devices]
        eps = np.array([led.epsilon(privacy.delta) for led in ledgers if led.history])
        info["privacy"] = {
            "epsilon_max": float(eps.max()) if len(eps) else 0.0,
            "epsilon_median": float(np.median(eps)) if len(eps) else 0.0,
            "delta": privacy.delta,
            "noise_multiplier": privacy.noise_multiplier,
            "sample_rate": mechanism.sample_rate(device),
            "steps": max(led.steps for led in ledgers),
            "unit": mechanism.unit,
        }
    return ArmResult("federated_dp" if privacy.private else "federated", scores, info)
