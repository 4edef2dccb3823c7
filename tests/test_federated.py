"""Federated training through Flower's real simulation engine, on encrypted stores (tiny config)."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import torch

from fedrec.client import fleet
from fedrec.client.device_round import EMBEDDING, ledger_of
from fedrec.client.fleet import evaluate_fleet, node_devices, train_fleet
from fedrec.common.config import (
    DeviceConfig,
    FederationConfig,
    Fleet,
    LocalTraining,
    PrivacyConfig,
    ServerConfig,
    Serving,
)
from fedrec.common.instructions import DeviceInstructions, DevicePrivacy, RoundInfo
from fedrec.common.item_rows import COUNTS, ITEM_TABLE
from fedrec.common.keys import create_key_file
from fedrec.common.model import ModelConfig, NeuMF, global_names
from fedrec.common.policy import SIMULATED
from fedrec.common.replies import EVALUATE_PRIVATE, TRAIN_PRIVATE
from fedrec.common.settings import from_nested
from fedrec.common.split import temporal_split
from fedrec.server.federation import initial_state
from fedrec.simulations.arms.federated import FederatedArm, fit_federated
from fedrec.simulations.provision import provision

SMALL = ModelConfig(gmf_dim=8, mlp_dim=8, layers=(16, 8))


def node_of(tmp_path, data, training: LocalTraining) -> DeviceConfig:
    """The device section of a node serving every user of ``data``, provisioned under ``tmp_path``."""
    stores = provisioned(tmp_path, data)
    return DeviceConfig(
        model=SMALL,
        n_items=data.n_items,
        participation=1.0,
        fleet=Fleet(str(stores), str(stores / "master.key")),
        training=training,
    )


def provisioned(tmp_path, data, seed=0):
    stores = tmp_path / "stores"
    stores.mkdir()
    master = create_key_file(stores / "master.key")
    provision(data, temporal_split(data, seed), stores, master)
    return stores


def test_two_rounds_on_flower_simulation_engine(tmp_path, tiny):
    data = tiny.subset_users(6)
    split = temporal_split(data, 0)
    fed = FederationConfig(
        server=ServerConfig(rounds=2),
        privacy=PrivacyConfig(mechanism="local", epsilon=8.0),
        device=DeviceConfig(
            model=SMALL, participation=1.0, training=LocalTraining(steps_per_epoch=4), serving=Serving(refit_steps=3)
        ),
    )
    arm = FederatedArm("federated_dp", data, tmp_path, fed, nodes=2, show=False)
    result = fit_federated(arm, split, 0)

    cfg = from_nested(FederationConfig, result.info["federation"], "report")
    model_dir = tmp_path / result.info["model_dir"]
    final = torch.load(model_dir / "global_model.pt", weights_only=True)
    start = initial_state(cfg.device)
    assert set(final) == set(start)
    assert any(not torch.allclose(final[k], start[k]) for k in final), "global model did not change"

    # every device trained both rounds: its ledger holds 2 rounds of steps and it persisted in the store
    for ref in node_devices({}, cfg.device.fleet):
        assert ledger_of(ref, cfg.device.state_prefix).steps == 2 * 4
    privacy = result.info["privacy"]
    assert privacy["steps"] == 8 and privacy["epsilon_max"] > 0

    wire = [json.loads(line) for line in (model_dir / "wire.jsonl").read_text().splitlines()]
    names = set(global_names(NeuMF(1, data.n_items, SMALL)))
    up = [w for w in wire if w["direction"] == "up"]
    assert len(up) == 2
    for entry in up:
        assert set(entry["arrays"]) == names and entry["same_names_in_all"]
        assert not any(name.startswith("user_emb") for name in entry["arrays"])
        assert entry["arrays"]["item_emb.weight"]["shape"] == list(NeuMF(1, data.n_items, SMALL).item_emb.weight.shape)

    assert result.scores.shape == (data.n_users, data.n_items)
    assert (tmp_path / "privacy" / "federated_dp_ledger.csv").exists()


def test_gateway_aggregate_equals_per_device_fedavg(tmp_path, tiny):
    """A node serving three devices replies with exactly the example-weighted mean of their updates, and
    the item table's rows with the mean over the examples that used each row, plus those counts."""
    device = node_of(tmp_path, tiny.subset_users(3), LocalTraining(steps_per_epoch=2))
    params = initial_state(device)
    devices = node_devices({}, device.fleet)

    def task(prefix: str) -> DeviceInstructions:
        return DeviceInstructions(replace(device, state_prefix=prefix), round=RoundInfo(number=1))

    together, metrics = train_fleet(devices, params, task("a/"), SIMULATED)
    singles = [train_fleet([d], params, task("b/"), SIMULATED) for d in devices]
    weights = np.array([m["num-examples"] for _, m in singles], dtype=float)
    assert metrics["num-examples"] == weights.sum()
    for name in params:
        if name == ITEM_TABLE:
            counts = [s[COUNTS] for s, _ in singles]
            rows = sum(c[:, None] * s[name].double() for c, (s, _) in zip(counts, singles))
            used = sum(counts) > 0
            expected = params[name].double().clone()
            expected[used] = rows[used] / sum(counts)[used, None]
            assert torch.equal(together[COUNTS], sum(counts))
        else:
            expected = sum(w * s[name].double() for w, (s, _) in zip(weights, singles)) / weights.sum()
        assert torch.allclose(together[name].double(), expected, atol=1e-6)


def test_private_replies_weigh_devices_equally_and_carry_only_public_counts(tmp_path, tiny):
    """Under DP a reply's weight is the number of devices (not their history lengths), and its metrics
    are exactly the private allow-list."""
    device = node_of(tmp_path, tiny.subset_users(3), LocalTraining(steps_per_epoch=2))
    privacy = DevicePrivacy(1.0, budget=100.0)
    params = initial_state(device)
    devices = node_devices({}, device.fleet)

    def task(prefix: str) -> DeviceInstructions:
        return DeviceInstructions(replace(device, state_prefix=prefix), privacy, RoundInfo(number=1))

    together, metrics = train_fleet(devices, params, task("a/"), SIMULATED)
    singles = [train_fleet([d], params, task("b/"), SIMULATED) for d in devices]
    assert tuple(metrics) == TRAIN_PRIVATE and metrics["num-examples"] == 3 == metrics["devices"]
    assert all(m["num-examples"] == 1 for _, m in singles)
    evaluated = evaluate_fleet(devices, params, task("a/"))
    assert tuple(evaluated) == EVALUATE_PRIVATE


def test_batched_node_equals_the_opacus_path_through_the_fleet(tmp_path, tiny, monkeypatch):
    """One DP round of a node, batched executor against Opacus device by device, through train_fleet:
    with sample rate 1 both take every example, so aggregate, ledgers and stored user rows agree."""
    base = node_of(tmp_path, tiny.subset_users(4), LocalTraining(steps_per_epoch=1, epochs=3, optimizer="sgd", lr=0.05))
    privacy = DevicePrivacy(0.7, max_grad_norm=0.5, budget=1e6)
    params = initial_state(base)
    devices = node_devices({}, base.fleet)
    out, opacus_calls = {}, []
    real = fleet.train_local
    monkeypatch.setattr(fleet, "train_local", lambda *a: opacus_calls.append(1) or real(*a))
    for executor in ("per_device", "batched"):
        device = replace(base, executor=executor, state_prefix=f"{executor}/")
        task = DeviceInstructions(device, privacy, RoundInfo(number=1))
        mean, metrics = train_fleet(devices, params, task, SIMULATED)
        assert len(opacus_calls) == len(devices)  # the batched round ran none through Opacus
        rows = [serving_or_training_row(ref, device.state_prefix) for ref in devices]
        ledgers = [ledger_of(ref, device.state_prefix).history for ref in devices]
        out[executor] = (mean, metrics, rows, ledgers)
    (m1, k1, r1, l1), (m2, k2, r2, l2) = out["per_device"], out["batched"]
    assert k1 == k2 and l1 == l2
    for name in m1:
        assert torch.allclose(m1[name], m2[name], atol=1e-5), name
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(r1, r2))


def serving_or_training_row(ref, prefix: str) -> np.ndarray:
    with ref.open() as store:
        raw = store.get_state(prefix + EMBEDDING)
    return np.load(io.BytesIO(raw))
