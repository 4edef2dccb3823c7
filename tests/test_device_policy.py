"""A device enforces its owner's policy against a malicious server: too little noise, a huge budget, a fresh
ledger under a new state prefix or a restarted round count, a large delta, a shared noise over one device, a
SecAgg+ threshold of 1, or a round without DP. Each ends in a refusal, and the honest round does not."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common.config import parse_config_args
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from fedrec.client.fleet import train_fleet
from fedrec.client.secagg_mod import REFUSED, secure_aggregation_mod
from fedrec.client.shared_noise import train_fleet_shared
from fedrec.client.supernode import ClientSettings, supernode_argv
from fedrec.client.user_level import train_fleet_user
from fedrec.common.config import DeviceConfig, LocalTraining, SharedNoise
from fedrec.common.errors import FedrecError
from fedrec.common.instructions import DeviceInstructions, DevicePrivacy, RoundInfo
from fedrec.common.mechanisms import mechanism_for
from fedrec.common.model import ModelConfig
from fedrec.common.policy import SIMULATED, DevicePolicy, node_policy
from fedrec.common.privacy import LIFETIME, LifetimeLedger
from fedrec.common.store import Events
from fedrec.simulations.audit.inprocess import MemoryDevice

N_ITEMS = 40
MODEL = ModelConfig(gmf_dim=4, mlp_dim=4, layers=(8, 4))
OWNER = DevicePolicy()  # a deployed device's defaults


def devices(n: int = 2) -> list[MemoryDevice]:
    out = []
    for d in range(n):
        items = np.random.default_rng(d).choice(N_ITEMS, 12, replace=False).astype(np.int64)
        events = Events(items, np.arange(12, dtype=np.int64), np.full(12, "rating"), np.full(12, np.nan, np.float32))
        out.append(MemoryDevice(f"d{d}", events))
    return out


def device_config(prefix: str = "run/", **kw) -> DeviceConfig:
    training = LocalTraining(steps_per_epoch=2, lr=0.05, optimizer="sgd")
    kw.setdefault("participation", 1.0)
    return DeviceConfig(n_items=N_ITEMS, model=MODEL, training=training, state_prefix=prefix, **kw)


def train_round(fleet, device: DeviceConfig, privacy: DevicePrivacy, number: int, policy: DevicePolicy):
    params = mechanism_for(privacy).initial_state(device)
    _, metrics = train_fleet(fleet, params, DeviceInstructions(device, privacy, RoundInfo(number)), policy)
    return metrics


def test_the_honest_round_runs_under_the_owners_defaults():
    fleet = devices()
    metrics = train_round(fleet, device_config(), DevicePrivacy(1.0, budget=8.0), 1, OWNER)
    assert metrics["refused"] == 0 and metrics["devices"] == 2
    assert all(LIFETIME in d.states for d in fleet)


@pytest.mark.parametrize(
    ("privacy", "device", "says"),
    [
        (DevicePrivacy(1e-4, budget=1e300), device_config(), "noise multiplier 0.0001 is below"),
        (DevicePrivacy(1.0, delta=1e-3, budget=8.0), device_config(), "delta 0.001 is above"),
        (DevicePrivacy(0.0), device_config(), "training without DP"),
    ],
)
def test_instructions_below_the_policy_are_refused_with_one_line(privacy, device, says, caplog):
    fleet = devices()
    metrics = train_round(fleet, device, privacy, 1, OWNER)
    assert metrics["refused"] == 2 and all(d.states == {} for d in fleet)
    refusals = [r.getMessage() for r in caplog.records if "refused round" in r.getMessage()]
    assert len(refusals) == 1 and says in refusals[0]
    assert train_round(devices(), device, privacy, 1, SIMULATED)["refused"] == 0  # the harness's own policy


def test_a_huge_budget_stops_at_the_lifetime_epsilon_and_a_new_prefix_does_not_reset_it(caplog):
    fleet = devices(1)
    owner = DevicePolicy(max_epsilon=3.0)
    privacy = DevicePrivacy(3.0, budget=1e300)  # about 1.2 per round
    trained = []
    for number in range(1, 30):
        trained.append(train_round(fleet, device_config("a/"), privacy, number, owner)["refused"] == 0)
    assert trained[0] and not all(trained)
    spent = LifetimeLedger.from_json(fleet[0].states[LIFETIME]).epsilon("record", 1e-5)
    assert spent <= 3.0 + 1e-9
    # the server names a fresh ledger: the run's ledger is empty, the lifetime one is not
    caplog.clear()
    assert train_round(fleet, device_config("b/"), privacy, 1, owner)["refused"] == 1
    assert "b/privacy_ledger" not in fleet[0].states
    (line,) = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert line.startswith("d0 refused round 1: the lifetime epsilon per record would reach")


def test_a_restarted_round_count_under_user_level_dp_counts_again():
    """Under ``user`` a device's run ledger is a function of the round number: a server restarting its
    count at round 1 would reset it. The lifetime ledger adds the new run's rounds instead."""
    fleet = devices(1)
    device = device_config("u/", shared_noise=SharedNoise(min_devices=2, feature_init=""))
    privacy = DevicePrivacy(5.0, budget=1e300, mechanism="user", expected_batch=1.0)
    params = mechanism_for(privacy).initial_state(device)
    for number in (1, 2, 3, 1, 2):
        task = DeviceInstructions(device, privacy, RoundInfo(number))
        train_fleet_user(fleet, params, task, OWNER)
    lifetime = LifetimeLedger.from_json(fleet[0].states[LIFETIME])
    assert lifetime.units["user"].steps == 5  # 3 rounds, then 2 more of a restarted run: none forgotten


def test_shared_noise_over_fewer_devices_than_the_policy_is_refused(caplog):
    device = device_config(shared_noise=SharedNoise(min_devices=1, count_sigma=0.0, feature_init=""))
    privacy = DevicePrivacy(1.0, budget=8.0, mechanism="distributed", expected_batch=1.0)
    params = mechanism_for(privacy).initial_state(device)
    task = DeviceInstructions(device, privacy, RoundInfo(2))
    _, metrics = train_fleet_shared(devices(), params, task, OWNER)
    assert metrics["refused"] == 2
    assert any("shared noise over 1 device(s)" in r.getMessage() for r in caplog.records)


def secagg_setup(threshold: int) -> Message:
    configs = ConfigRecord({Key.STAGE: Stage.SETUP, Key.SHARE_NUMBER: 4, Key.THRESHOLD: threshold})
    return Message(RecordDict({RECORD_KEY_CONFIGS: configs}), dst_node_id=7, message_type=MessageType.TRAIN)


@pytest.mark.parametrize(("threshold", "refused"), [(1, True), (2, False)])
def test_a_secagg_threshold_below_the_policy_is_refused_at_setup(threshold, refused, task_identity):
    node_config = {"store": "/x.db", "key-file": "/k", **parse_config_args([OWNER.to_node_config()])}
    context = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})
    reply = secure_aggregation_mod(
        secagg_setup(threshold), context, lambda m, c: Message(Error(0, "handler"), reply_to=m)
    )
    if refused:
        assert reply.error.code == REFUSED and "threshold 1 is below" in reply.error.reason
    else:
        assert reply.error.code != REFUSED  # on to Flower's own SecAgg+ stage (which fails here on no keys)


def test_the_policy_travels_in_the_node_config_and_nothing_else_sets_it(tmp_path):
    strict = DevicePolicy(min_noise_multiplier=0.8, max_epsilon=math.inf, allow_non_private=True)
    settings = ClientSettings(
        tmp_path / "d.db", tmp_path / "d.key", "h:1", tmp_path / "ca", tmp_path / "k", policy=strict
    )
    argv = supernode_argv(settings, 9999, {"store": tmp_path / "d.db", "key-file": tmp_path / "d.key"})
    node_config = parse_config_args([argv[argv.index("--node-config") + 1]])
    assert node_policy(node_config) == strict
    assert node_policy({"store": "/x"}) == OWNER  # a deployed node without flags: the strict defaults
    assert node_policy({"partition-id": 0}) == SIMULATED
    with pytest.raises(FedrecError, match="unknown device policy key policy.max_budget"):
        node_policy({"store": "/x", "policy.max_budget": 1.0})
    with pytest.raises(FedrecError, match="policy.max_delta: must be in"):
        node_policy({"store": "/x", "policy.max_delta": 2.0})
