"""Train replies summed under Flower's SecAgg+ (server/secure_aggregation.py, client/secagg_mod.py).

The federation runs in-process: fedrec's ServerApp code (``run_federation`` behind ``secure_grid``)
and its ClientApp (with ``secaggplus_mod``) exchange real Flower messages through a grid that hands
each message to the node's ClientApp, with a Context per node as a SuperNode keeps it. Gateways (a
node serving several provisioned devices, ``client/fleet.py``) train the same devices with the same
seeds under both paths, so the secure aggregate must equal the plain one within the stated
quantization bound. The real network, TLS and a killed SuperNode are in tests/test_deployment_secagg.py.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.serverapp import Grid
from synthetic_data import synthetic_log

from fedrec.client.app import app as client_app
from fedrec.client.secagg_mod import REFUSED, secure_aggregation_mod
from fedrec.common.config import FederationConfig, SecureAggregation, load_config
from fedrec.common.errors import FedrecError
from fedrec.common.keys import create_key_file
from fedrec.common.settings import from_flat, from_nested
from fedrec.common.split import temporal_split
from fedrec.server.federation import initial_state, resolve_items, run_federation
from fedrec.server.secure_aggregation import SECURE_DIRECTION, quantization_bound, secure_grid
from fedrec.simulations.audit.wire import audit_wire_log
from fedrec.simulations.provision import provision

NODES, DEVICES = 4, 8  # two devices per gateway
SECURE = SecureAggregation(enabled=True, reconstruction_threshold=3, clipping_range=1.0, quantization_range=2**12)


class InProcessGrid(Grid):
    """Delivers each message to the destination node's ClientApp. A node in ``dies_after`` answers that
    many train messages and then nothing (a SuperNode that was killed)."""

    def __init__(self, node_configs: list[dict], dies_after: dict[int, int] | None = None):
        self.contexts = {
            nid: Context(run_id=1, node_id=nid, node_config=cfg, state=RecordDict(), run_config={})
            for nid, cfg in zip(range(101, 101 + len(node_configs)), node_configs)
        }
        self.dies_after = dies_after or {}
        self.train_messages = dict.fromkeys(self.contexts, 0)

    def set_run(self, run) -> None:
        pass

    @property
    def run(self):
        return SimpleNamespace(run_id=1)

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self):
        return [nid for nid in self.contexts if self.train_messages[nid] < self.dies_after.get(nid, 10**9)]

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            nid = msg.metadata.dst_node_id
            if msg.metadata.message_type == MessageType.TRAIN:
                self.train_messages[nid] += 1
                if self.train_messages[nid] > self.dies_after.get(nid, 10**9):
                    continue  # dead: never replies
            delivered = Message(content=copy.deepcopy(msg.content), metadata=copy.deepcopy(msg.metadata))
            replies.append(client_app(delivered, self.contexts[nid]))  # a copy, as if it had crossed the wire
        return replies


pytestmark = pytest.mark.usefixtures("task_identity")  # conftest.py


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Path:
    """Eight provisioned devices (a learnable synthetic log), copied afresh for every run."""
    out = tmp_path_factory.mktemp("fleet")
    data = synthetic_log(n_users=DEVICES, n_items=24, per_user=10)
    provision(data, temporal_split(data, 0), out, create_key_file(out / "master.key"))
    return out


def federation(fleet: Path, out: Path, sa: SecureAggregation, overrides: dict | None = None) -> FederationConfig:
    copy = out / "fleet"
    shutil.copytree(fleet, copy)
    base = load_config().federation
    cfg = from_flat(
        FederationConfig,
        {
            "server.rounds": 1,
            "server.out_dir": str(out),
            "server.strategy.min_nodes": 2,
            "device.fleet.stores_dir": str(copy),
            "device.fleet.master_key_file": str(copy / "master.key"),
            "device.participation": 1.0,
            "device.model.gmf_dim": 4,
            "device.model.mlp_dim": 4,
            "device.model.layers": "8,4",
            "device.training.steps_per_epoch": 2,
            "device.training.negatives": 2,
            "device.training.lr": 0.05,
            "device.serving.refit_steps": 1,
            **(overrides or {}),
        },
        "test",
        complete=False,
        base=base,
    )
    return replace(cfg, server=replace(cfg.server, secure_aggregation=sa))


def run(
    fleet: Path,
    out: Path,
    sa: SecureAggregation,
    dies_after: dict[int, int] | None = None,
    overrides: dict | None = None,
):
    cfg = federation(fleet, out, sa, overrides)
    nodes = [{"partition-id": i, "num-partitions": NODES} for i in range(NODES)]
    result = run_federation(secure_grid(InProcessGrid(nodes, dies_after), cfg.server), cfg)
    wire = [json.loads(line) for line in (out / "wire.jsonl").read_text().splitlines()]
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    return torch.load(result.model, weights_only=True), wire, rounds


def max_gap(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_gateways_secure_sum_equals_the_plain_sum(fleet, tmp_path):
    """Same devices, same seeds: the SecAgg+ aggregate is the plain FedAvg within the quantization bound."""
    sa = replace(SECURE, max_weight=2.0)  # under DP a gateway weighs one per device that trained
    plain, plain_wire, _ = run(fleet, tmp_path / "plain", replace(sa, enabled=False))
    secure, wire, rounds = run(fleet, tmp_path / "secure", sa)
    bound = quantization_bound([2.0] * NODES, sa)
    assert bound == pytest.approx(2 * sa.clipping_range / sa.quantization_range)
    gap = max_gap(plain, secure)
    assert bound / 50 < gap <= bound + 1e-6, (gap, bound)  # quantized (not the plain path), and within the bound
    print(f"secure vs plain aggregate: largest gap {gap:.3g}, bound {bound:.3g}", file=sys.stderr)
    (line,) = [entry for entry in wire if entry["direction"] == SECURE_DIRECTION]
    assert line["revealed"] and line["masked_vectors"] == NODES and line["nodes_sampled"] == NODES
    assert [s["nodes"] for s in line["stages"]] == [NODES] * 4
    (up,) = [entry for entry in wire if entry["direction"] == "up"]
    assert up["n_messages"] == 1  # the strategy saw one aggregate, never a node's reply
    (plain_up,) = [entry for entry in plain_wire if entry["direction"] == "up"]
    assert plain_up["n_messages"] == NODES and up["metric_keys"] == plain_up["metric_keys"]
    assert rounds[0]["train"]["devices"] == DEVICES and len(rounds[0]["epsilons"]) == DEVICES
    audit = audit_wire_log(tmp_path / "secure" / "wire.jsonl", tmp_path / "secure" / "model.json")
    assert audit["ok"] and audit["messages_up"] == 1, audit["problems"]


def test_a_node_lost_after_key_sharing_is_recovered(fleet, tmp_path):
    """Node 104 answers setup and key sharing, then dies: its masks are rebuilt from the others' shares
    and the round reveals the sum of the three that remain, as the plain path averages them."""
    sa = replace(SECURE, max_weight=2.0)
    plain, _, _ = run(fleet, tmp_path / "plain", replace(sa, enabled=False), dies_after={104: 0})
    secure, wire, rounds = run(fleet, tmp_path / "secure", sa, dies_after={104: 2})
    (line,) = [entry for entry in wire if entry["direction"] == SECURE_DIRECTION]
    assert [s["nodes"] for s in line["stages"]] == [4, 4, 3, 3] and line["revealed"]
    assert max_gap(plain, secure) <= quantization_bound([2.0] * 3, sa) + 1e-6
    assert rounds[0]["train"]["devices"] == DEVICES - 2


def test_too_few_nodes_left_drops_the_round(fleet, tmp_path):
    """Two of four nodes die after key sharing; with a threshold of 3 nothing is unmasked: the global model
    stays as it was, and the devices that trained still report the budget they spent."""
    secure, wire, rounds = run(fleet, tmp_path / "secure", sa := replace(SECURE, max_weight=2.0), {103: 2, 104: 2})
    initial = initial_state(resolve_items(federation(fleet, tmp_path / "initial", sa).device))
    (line,) = [entry for entry in wire if entry["direction"] == SECURE_DIRECTION]
    assert not line["revealed"] and line["masked_vectors"] == 2
    assert max_gap(initial, secure) == 0.0
    assert rounds[0]["train"]["devices"] == 0 and len(rounds[0]["epsilons"]) == DEVICES // 2


def test_weight_above_max_weight_is_refused(fleet, tmp_path):
    with pytest.raises(FedrecError, match="max_weight=1: its update would be clipped"):
        run(fleet, tmp_path / "secure", SECURE)  # each gateway weighs 2


def test_device_refuses_a_plain_train_request_when_it_requires_secagg():
    msg = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=7, message_type=MessageType.TRAIN)
    context = Context(
        run_id=1, node_id=7, node_config={"secure-aggregation": "required"}, state=RecordDict(), run_config={}
    )
    handled = []
    reply = secure_aggregation_mod(msg, context, lambda m, c: handled.append(m) or Message(Error(0, "x"), reply_to=m))
    assert reply.has_error() and reply.error.code == REFUSED and "only under secure aggregation" in reply.error.reason
    assert not handled
    context.node_config.clear()
    secure_aggregation_mod(msg, context, lambda m, c: handled.append(m) or Message(Error(0, "x"), reply_to=m))
    assert handled == [msg]


def test_bound_and_settings():
    sa = SecureAggregation(clipping_range=0.5, quantization_range=2**10, max_weight=4.0)
    assert quantization_bound([4.0, 4.0], sa) == pytest.approx(2 * 0.5 / 2**10)
    assert quantization_bound([1.0, 3.0], sa) > quantization_bound([4.0, 4.0], sa)
    assert np.isclose(quantization_bound([0.0, 0.0], sa), 0.0)
    with pytest.raises(FedrecError, match="secure_aggregation.reconstruction_threshold: must be < num_shares"):
        from_flat(
            FederationConfig,
            {"server.secure_aggregation.num_shares": 3, "server.secure_aggregation.reconstruction_threshold": 3},
            "run config",
            complete=False,
        )


@pytest.mark.e2e
def test_flower_simulation_engine_runs_rounds_under_secagg(tmp_path, tiny):
    """`fedrec simulate`'s path (Flower's simulation engine, Ray) with secure aggregation on: each round is
    revealed as one aggregate of the three gateways, and the model moves."""
    from fedrec.simulations.arms.federated import FederatedArm, fit_federated

    data = tiny.subset_users(6)
    cfg = from_flat(
        FederationConfig,
        {
            "server.rounds": 2,
            "device.participation": 1.0,
            "device.model.gmf_dim": 4,
            "device.model.mlp_dim": 4,
            "device.model.layers": "8,4",
            "device.training.steps_per_epoch": 2,
            "device.serving.refit_steps": 1,
            "server.secure_aggregation.enabled": True,
            "server.secure_aggregation.reconstruction_threshold": 2,
            "server.secure_aggregation.max_weight": 2.0,
        },
        "test",
        complete=False,
        base=load_config().federation,
    )
    result = fit_federated(
        FederatedArm("federated_dp", data, tmp_path, cfg, nodes=3, show=False), temporal_split(data, 0), 0
    )
    model_dir = tmp_path / result.info["model_dir"]
    wire = [json.loads(line) for line in (model_dir / "wire.jsonl").read_text().splitlines()]
    secure = [e for e in wire if e["direction"] == SECURE_DIRECTION]
    assert [(e["revealed"], e["masked_vectors"]) for e in secure] == [(True, 3), (True, 3)]
    assert [e["n_messages"] for e in wire if e["direction"] == "up"] == [1, 1]
    final = torch.load(model_dir / "global_model.pt", weights_only=True)
    start = initial_state(from_nested(FederationConfig, result.info["federation"], "report").device)
    assert max_gap(final, start) > 0


# Shared noise: every node's share goes on the grid (fedrec.common.secure_sum); the sum must stay in range.
SHARED = SecureAggregation(enabled=True, reconstruction_threshold=3, clipping_range=256.0, quantization_range=2**20)
MECHANISMS = {
    "distributed": {  # round 1 the item histogram, round 2 one DP-SGD step of the item table
        "privacy.mechanism": "distributed",
        "device.model.kind": "gmf",
        "device.model.item_bias": False,
        "device.model.prior": True,
        "device.shared_noise.feature_init": "",
        "device.shared_noise.min_devices": 3,
        "device.shared_noise.table_lr": 5.0,
        "server.rounds": 2,
    },
    "user": {
        "privacy.mechanism": "user",
        "privacy.max_update_norm": 0.5,
        "device.shared_noise.min_devices": 3,
        "server.rounds": 2,
    },
}


def recorded_sums(monkeypatch) -> list[dict[str, torch.Tensor]]:
    """Every sum the shared-noise aggregation applies, as it receives it."""
    from fedrec.server import shared_noise

    sums, summed = [], shared_noise.summed
    monkeypatch.setattr(shared_noise, "summed", lambda replies: sums.append(summed(replies)) or sums[-1])
    return sums


@pytest.mark.parametrize("mechanism", sorted(MECHANISMS))
def test_shared_noise_secure_sum_equals_the_plain_sum(fleet, tmp_path, monkeypatch, mechanism):
    """Same devices, same seeded noise: what the server applies under SecAgg+ is the plain sum of the node
    shares up to each node's rounding onto the grid (below one step per node and coordinate), including a
    round in which a node dies after the key sharing (round 2: its masks are rebuilt, 3 nodes remain)."""
    overrides = MECHANISMS[mechanism]
    sums = recorded_sums(monkeypatch)
    run(fleet, tmp_path / "plain", replace(SHARED, enabled=False), {104: 1}, overrides)
    plain = list(sums)
    sums.clear()
    _, wire, rounds = run(fleet, tmp_path / "secure", SHARED, {104: 6}, overrides)
    assert len(sums) == len(plain) == 2
    step = 2 * SHARED.clipping_range / SHARED.quantization_range
    for nodes, p, s in zip((NODES, NODES - 1), plain, sums):
        assert p.keys() == s.keys()
        gap = max(float((p[k] - s[k]).abs().max()) for k in p)
        assert 0 < gap < nodes * step, (gap, nodes * step)  # rounded (not the plain path), within the bound
    secure = [e for e in wire if e["direction"] == SECURE_DIRECTION]
    assert [[st["nodes"] for st in e["stages"]] for e in secure] == [[4] * 4, [4, 4, 3, 3]]
    assert all(e["revealed"] and 0 < e["sum_headroom"] < 0.5 for e in secure)
    assert [r["train"]["devices"] for r in rounds] == [DEVICES, DEVICES - 2]


def test_shared_noise_needs_a_threshold_of_min_devices(fleet, tmp_path):
    overrides = {**MECHANISMS["distributed"], "device.shared_noise.min_devices": 4}
    with pytest.raises(FedrecError, match="reconstruction_threshold=3 is below .*min_devices=4"):
        run(fleet, tmp_path / "secure", SHARED, None, overrides)
    with pytest.raises(FedrecError, match="must be powers of two"):
        run(fleet, tmp_path / "odd", replace(SHARED, clipping_range=3.0), None, MECHANISMS["distributed"])


def test_a_deployed_device_refuses_a_plain_shared_noise_round():
    """A device that adds only its share of the noise answers only under SecAgg+, whatever its flags."""
    from fedrec.common.config import DeviceConfig
    from fedrec.common.instructions import DeviceInstructions, DevicePrivacy

    task = DeviceInstructions(DeviceConfig(), DevicePrivacy(1.0, 1.0, 1e-5, 8.0, "distributed", 10.0))
    msg = Message(RecordDict({"config": ConfigRecord(task.to_config())}), dst_node_id=7, message_type=MessageType.TRAIN)
    handled = []
    for node_config, refused in (({"store": "/x.db", "key-file": "/k"}, True), ({"partition-id": 0}, False)):
        context = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})
        reply = secure_aggregation_mod(
            msg, context, lambda m, c: handled.append(m) or Message(Error(0, "x"), reply_to=m)
        )
        assert (reply.error.code == REFUSED) is refused
    assert handled == [msg]  # only the simulated node's handler ran
